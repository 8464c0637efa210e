"""FastFlow's flows in their scoring form give anomalib's hidden variables."""

from __future__ import annotations

import pytest
import torch
from anomalib.models.components.flow import AllInOneBlock
from anomalib.models.image.fastflow.torch_model import create_fast_flow_block, subnet_conv_func

from assets.vad.models.scoring_flows import ScoringFlows, prepare_flow, run_flow


def trained_like(block: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every flow parameter (subnets, global scale and offset) away from its initial value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in block.named_parameters():
            if "w_perm" not in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return block.eval()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("conv3x3_only", [False, True])
def test_scoring_form_matches_anomalibs_block(channels_last, conv3x3_only):
    torch.manual_seed(0)
    block = trained_like(create_fast_flow_block([12, 8, 8], conv3x3_only, 1.0, flow_steps=4), 1)
    features = torch.randn(3, 12, 8, 8)
    if channels_last:
        block.to(memory_format=torch.channels_last)
        features = features.contiguous(memory_format=torch.channels_last)
    steps = prepare_flow(block)
    assert steps is not None
    with torch.no_grad():
        expected = block(features)[0]
        actual = run_flow(steps, features)
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(actual, features, atol=0.1)  # the flow did transform the features


def test_blocks_with_a_soft_permutation_are_left_to_anomalib():
    torch.manual_seed(0)
    from FrEIA.framework import SequenceINN

    block = SequenceINN(6, 4, 4)
    block.append(AllInOneBlock, subnet_constructor=subnet_conv_func(3, 1.0), permute_soft=True)
    assert prepare_flow(block) is None


def test_prepared_flows_follow_weight_updates():
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([trained_like(create_fast_flow_block([8, 4, 4], False, 1.0, 2), 2)])
    features = torch.randn(2, 8, 4, 4)
    cache = ScoringFlows()
    first = cache.get(blocks)
    assert cache.get(blocks) is first
    optimizer = torch.optim.SGD(blocks.parameters(), lr=0.5)
    blocks.train()
    hidden, jacobian = blocks[0](features)
    (hidden.square().sum() - jacobian.sum()).backward()
    optimizer.step()
    blocks.eval()
    second = cache.get(blocks)
    assert second is not first
    with torch.no_grad():
        assert torch.allclose(run_flow(second[0], features), blocks[0](features)[0], rtol=1e-5, atol=1e-5)
