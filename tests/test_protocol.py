"""Runs say which split selected their checkpoint; selecting on test is tagged."""

from omegaconf import OmegaConf

from fer_lab.tracking.protocol import protocol_tags

from .helpers import compose_config


def test_default_protocol_selects_on_public_test_and_reports_private_test() -> None:
    tags = protocol_tags(compose_config())
    assert tags == {
        "protocol.train": "Training",
        "protocol.select": "PublicTest",
        "protocol.report": "PrivateTest",
        "protocol.selects_on_test": "false",
    }


def test_held_out_validation_is_described() -> None:
    tags = protocol_tags(compose_config("dataset=fer2013_folder"))
    assert tags["protocol.select"] == "10% of train, seeded"
    assert tags["protocol.selects_on_test"] == "false"


def test_selecting_on_the_test_split_is_tagged() -> None:
    same_split = compose_config("dataset.splits.val=PrivateTest")
    assert protocol_tags(same_split)["protocol.selects_on_test"] == "true"
    monitor = compose_config("callbacks.model_checkpoint.monitor=test/acc")
    assert protocol_tags(monitor)["protocol.selects_on_test"] == "true"
    plateau = compose_config("scheduler=plateau")
    assert protocol_tags(plateau)["protocol.selects_on_test"] == "false"
    OmegaConf.update(plateau, "scheduler.monitor", "test/loss")
    assert protocol_tags(plateau)["protocol.selects_on_test"] == "true"
