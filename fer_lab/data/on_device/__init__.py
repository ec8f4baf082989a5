"""The on-device data path: whole splits as uint8 tensors on the training device, batches
cut, augmented and normalised there with torch ops."""
