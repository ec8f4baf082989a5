"""Every model config builds, runs on its input size and matches the seeds' parameter counts."""

import re
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from fer_lab.models import CNTKNet, count_parameters
from fer_lab.models.layers import SamePool2d

from .helpers import compose_config

MODELS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "model").glob("*.yaml"))

# (total, trainable) parameters per model config, with the dataset that fixes the number of
# classes: README.md's "### Models" table (2 classes for seed 000's models, 8 for seed 002's,
# 7 otherwise).
REFERENCE_COUNTS = {
    ("cntk_simple", "fer2013_happy_sad"): (28_274, 28_274),
    ("dachapally", "fer2013_happy_sad"): (5_935_330, 5_935_330),
    ("dachapally_wide", "fer2013_happy_sad"): (37_917_906, 37_917_906),
    ("tf_emotion_cnn", "synthetic"): (2_380_679, 2_380_679),
    ("vgg16_transfer", "image_folder_csv"): (40_414_024, 32_778_760),
    ("convnet0", "synthetic"): (20_235, 20_235),
    ("convnet1", "synthetic"): (19_550_869, 19_550_869),
    ("convnet2", "synthetic"): (2_444_437, 2_444_437),
    ("convnet3", "synthetic"): (1_259_669, 1_259_669),
    ("convnet4", "synthetic"): (613_973, 613_973),
    ("convnet5", "synthetic"): (1_259_669, 1_259_669),
    ("nouri", "synthetic"): (4_250_479, 4_250_479),
    ("fer_vgg", "synthetic"): (4_821_191, 4_821_191),
}
COUNTS_BY_MODEL = {name: counts for (name, _), counts in REFERENCE_COUNTS.items()}


def build(model: str, dataset: str = "synthetic", *overrides: str) -> torch.nn.Module:
    extra = ["model.pretrained=false"] if model == "vgg16_transfer" else []
    cfg = compose_config(f"model={model}", f"dataset={dataset}", *extra, *overrides)
    return instantiate(cfg.model), cfg


def test_every_seed_architecture_has_a_config() -> None:
    expected = {"cntk_simple", "dachapally", "dachapally_wide", "tf_emotion_cnn", "nouri"}
    expected |= {"vgg16_transfer"} | {f"convnet{i}" for i in range(6)}
    assert expected <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_gives_one_score_per_class(name: str) -> None:
    net, cfg = build(name)
    net.eval()
    images = torch.rand(2, cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size)
    with torch.no_grad():
        out = net(images)
    assert out.shape == (2, len(cfg.dataset.classes)) == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "dataset"), list(REFERENCE_COUNTS))
def test_parameter_counts_match_the_seeds(name: str, dataset: str) -> None:
    net, _ = build(name, dataset)
    assert count_parameters(net) == REFERENCE_COUNTS[(name, dataset)]


def test_every_model_config_has_a_reference_count() -> None:
    assert sorted(COUNTS_BY_MODEL) == MODELS


def readme_model_counts() -> dict[str, tuple[int, int]]:
    """(total, trainable) per config in README.md's "### Models" table: one number is both,
    "a / b trainable" is both apart, and `convnet0`..`convnet5` lists one number per network."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("\n### Models\n", 1)[1].split("\n#", 1)[0]
    counts = {}
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        names = re.findall(r"`(\w+)`", cells[0])
        if len(cells) != 3 or not names:
            continue  # prose, the header or the separator
        numbers = [int(n.replace(",", "")) for n in re.findall(r"\d{1,3}(?:,\d{3})+", cells[2])]
        if ".." in cells[0]:  # `convnet0`..`convnet5`
            stem = names[0].rstrip("0123456789")
            first, last = int(names[0][len(stem) :]), int(names[1][len(stem) :])
            names = [f"{stem}{i}" for i in range(first, last + 1)]
            counts |= {name: (n, n) for name, n in zip(names, numbers, strict=True)}
        elif "trainable" in cells[2]:
            total, trainable = numbers
            counts[names[0]] = (total, trainable)
        else:
            (total,) = numbers
            counts[names[0]] = (total, total)
    return counts


def test_readme_table_lists_the_asserted_counts() -> None:
    """The README's table lists every model config, with the counts the test above asserts."""
    assert readme_model_counts() == {name: COUNTS_BY_MODEL[name] for name in MODELS}


def test_num_classes_follows_the_dataset() -> None:
    net, _ = build("convnet5", "fer2013_happy_sad", "dataset.path=/nowhere")
    assert net.fc2[0].out_features == 2


@pytest.mark.parametrize("name", [m for m in MODELS if m not in ("convnet0", "cntk_simple")])
def test_dropout_is_exposed_for_sweeps(name: str) -> None:
    net, _ = build(name, "synthetic", "model.dropout=0.25")
    rates = {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout | torch.nn.Dropout2d)}
    assert rates == {0.25}


def test_vgg16_freezes_all_but_the_last_block() -> None:
    net, _ = build("vgg16_transfer", "image_folder_csv")
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.weight.requires_grad for c in convs] == [False] * 10 + [True] * 3


def test_vgg16_local_weights_file_is_loaded(tmp_path: Path) -> None:
    from torchvision.models import vgg16

    reference = vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(reference.state_dict(), path)
    net, _ = build("vgg16_transfer", "image_folder_csv", f"model.weights_path={path}")
    assert torch.equal(net.features[0].weight, reference.features[0].weight)


def test_vgg16_missing_weights_file_says_what_to_do() -> None:
    with pytest.raises(InstantiationException, match=r"set model\.pretrained=false"):
        build("vgg16_transfer", "image_folder_csv", "model.weights_path=/no/such/file.pth")


def test_tf_emotion_l2_covers_conv_weights_and_biases_only() -> None:
    net, _ = build("tf_emotion_cnn")
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    conv_values = sum(p.numel() for p in (*net.conv1.parameters(), *net.conv2.parameters()))
    assert net.regularization_loss().item() == pytest.approx(0.01 * 0.5 * conv_values)


def test_same_pooling_keeps_size_and_ignores_padding() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    avg = SamePool2d("avg")(x)
    assert avg.shape == x.shape
    assert avg[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4
    assert avg[0, 0, 3, 3] == 15  # only the real corner value, not diluted by padding
    assert SamePool2d("max")(-x)[0, 0, 3, 3] == -15


def test_cntk_simple_strided_layer_halves_the_map() -> None:
    net = CNTKNet(2, [8, 16, 16], [5, 5, 5], [1, 1, 2], ["avg", "avg", "avg"])
    assert net.classifier[-1].in_features == 16 * 24 * 24


def fer_vgg_default_keys() -> set[str]:
    """The state_dict keys of fer_vgg as checkpoints before its width/depth/residual options
    hold them: per stage conv-BN-ReLU twice, then the pool; the head's two linear layers."""
    keys = set()
    for stage in range(4):
        for conv, bn in ((0, 1), (3, 4)):
            keys |= {f"features.{stage}.{conv}.{p}" for p in ("weight", "bias")}
            stats = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
            keys |= {f"features.{stage}.{bn}.{p}" for p in stats}
    return keys | {f"head.{layer}.{p}" for layer in (3, 6) for p in ("weight", "bias")}


def test_fer_vgg_defaults_keep_the_checkpoint_layout() -> None:
    net, _ = build("fer_vgg")
    explicit, _ = build("fer_vgg", "synthetic", "model.width=1", "model.depth=1")
    assert set(net.state_dict()) == set(explicit.state_dict()) == fer_vgg_default_keys()
    explicit.load_state_dict(net.state_dict())  # strict: same names, same shapes


def conv_widths(net: torch.nn.Module) -> list[int]:
    return [m.out_channels for m in net.features.modules() if isinstance(m, torch.nn.Conv2d)]


def test_fer_vgg_width_scales_every_stage() -> None:
    net, _ = build("fer_vgg", "synthetic", "model.width=0.5")
    assert conv_widths(net) == [32, 32, 64, 64, 128, 128, 256, 256]
    assert net.head[3].in_features == 256


def test_fer_vgg_depth_repeats_the_conv_pairs() -> None:
    net, _ = build("fer_vgg", "synthetic", "model.depth=2")
    assert conv_widths(net) == [c for c in (64, 128, 256, 512) for _ in range(4)]


def test_fer_vgg_residual_pairs_add_their_shortcut() -> None:
    net, cfg = build("fer_vgg", "synthetic", "model.residual=true", "model.depth=2")
    first, second = net.features[0][0], net.features[0][1]
    assert isinstance(first.shortcut[0], torch.nn.Conv2d)  # 1 -> 64 channels: a projection
    assert isinstance(second.shortcut, torch.nn.Identity)  # 64 -> 64
    x = torch.rand(2, 64, 12, 12)
    with torch.no_grad():
        second.body[-1].weight.zero_()  # the body's last BN then outputs its bias: zero
        second.body[-1].bias.zero_()
        assert torch.equal(second(x), torch.relu(x))  # what is left is the shortcut
    net.eval()
    size = cfg.model.input_size
    assert net(torch.rand(2, 1, size, size)).shape == (2, 7)


@pytest.mark.parametrize(
    ("override", "key"), [("model.width=0", "model.width"), ("model.depth=0", "model.depth")]
)
def test_fer_vgg_bad_levers_name_their_key(override: str, key: str) -> None:
    with pytest.raises(InstantiationException, match=key):
        build("fer_vgg", "synthetic", override)
