"""What every part of fer_lab shares: config resolvers, config checks, the exit-2 CLI
wrapper, error types."""
