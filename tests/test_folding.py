"""Batch-norm folding gives the backbone's features with fewer passes, and refuses when it cannot."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from vad.models.folding import fold_batch_norms
from vad.models.weight_cache import WeightKeyedCache


def randomise_norms(model: nn.Module, seed: int) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters (fresh timm models have none)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)


def count_norms(model: nn.Module) -> int:
    return sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())


@pytest.mark.parametrize(
    ("backbone", "layers"),
    [("resnet18", (1, 2)), ("mobilenetv2_100", (2, 3)), ("tf_efficientnet_lite0", (2, 3))],
)
def test_folded_backbone_gives_the_same_features_without_batch_norms(backbone, layers):
    model = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=layers).eval()
    randomise_norms(model, 0)
    model = model.to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    folded = fold_batch_norms(model, images[:1])
    assert count_norms(model) > 0
    assert count_norms(folded) == 0
    with torch.no_grad():
        expected, actual = model(images), folded(images)
    for exp, act in zip(expected, actual, strict=True):
        assert torch.allclose(act, exp, rtol=1e-4, atol=1e-4 * float(exp.abs().max()))
    for name, tensor in model.state_dict().items():  # the original is untouched
        assert torch.equal(tensor, before[name])


class ReadsConvOutputTwice(nn.Module):
    """A convolution whose output feeds a BatchNorm and, unnormalised, a skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_folding_is_refused_when_the_convolution_output_is_read_elsewhere(caplog):
    model = ReadsConvOutputTwice().eval()
    randomise_norms(model, 1)
    images = torch.randn(2, 3, 16, 16)
    with caplog.at_level("WARNING", logger="assets.folding"):
        folded = fold_batch_norms(model, images[:1])
    assert "using the unfolded backbone" in caplog.text  # the pair was found, folded, checked and undone
    assert count_norms(folded) == 1  # the unfolded copy, since folding would change the sum
    with torch.no_grad():
        assert torch.allclose(folded(images), model(images))


def test_folded_copy_follows_loaded_weights():
    model = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1,)).eval()
    images = torch.randn(1, 3, 32, 32)
    cache: WeightKeyedCache[nn.Module] = WeightKeyedCache()

    def fold() -> nn.Module:
        return fold_batch_norms(model, images)

    first = cache.get(model, fold)
    assert cache.get(model, fold) is first  # unchanged weights: no second fold
    donor = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1,)).eval()
    randomise_norms(donor, 2)
    model.load_state_dict(donor.state_dict())
    second = cache.get(model, fold)
    assert second is not first
    with torch.no_grad():
        assert torch.allclose(second(images)[0], donor(images)[0], rtol=1e-4, atol=1e-5)
