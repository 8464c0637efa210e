"""FastFlow's flows in their scoring form give anomalib's hidden variables."""

from __future__ import annotations

import pytest
import torch
from anomalib.models.components.flow import AllInOneBlock
from anomalib.models.image.fastflow.torch_model import create_fast_flow_block, subnet_conv_func

from vad.models.fastflow.flow_steps import prepare_flow, run_flow, train_flow
from vad.models.weight_cache import WeightKeyedCache


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


def test_training_form_matches_anomalibs_block_and_gradients():
    torch.manual_seed(0)
    block = trained_like(create_fast_flow_block([12, 8, 8], False, 1.0, flow_steps=4), 3).train()
    features = torch.randn(3, 12, 8, 8)
    results = []
    for run in (lambda x: block(x), lambda x: train_flow(block, x)):
        block.zero_grad()
        inputs = features.clone().requires_grad_(True)
        hidden, jacobian = run(inputs)
        (0.5 * hidden.square().sum() - jacobian.sum()).backward()  # the shape of FastFlow's loss
        grads = {name: p.grad.clone() for name, p in block.named_parameters() if p.grad is not None}
        results.append((hidden.detach(), jacobian.detach(), inputs.grad, grads))
    (hidden, jacobian, input_grad, grads), (hidden2, jacobian2, input_grad2, grads2) = results
    assert torch.allclose(hidden2, hidden, rtol=1e-5, atol=1e-5)
    assert torch.allclose(jacobian2, jacobian, rtol=1e-5, atol=1e-4)
    assert torch.allclose(input_grad2, input_grad, rtol=1e-4, atol=1e-4)
    assert grads2.keys() == grads.keys() and any("global_scale" in name for name in grads)
    for name, grad in grads.items():
        assert torch.allclose(grads2[name], grad, rtol=1e-4, atol=1e-4 * float(grad.abs().max())), name


def test_blocks_with_a_soft_permutation_are_left_to_anomalib():
    torch.manual_seed(0)
    from FrEIA.framework import SequenceINN

    block = SequenceINN(6, 4, 4)
    block.append(AllInOneBlock, subnet_constructor=subnet_conv_func(3, 1.0), permute_soft=True)
    assert prepare_flow(block) is None
    assert train_flow(block, torch.randn(1, 6, 4, 4)) is None


def test_prepared_flows_follow_weight_updates():
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([trained_like(create_fast_flow_block([8, 4, 4], False, 1.0, 2), 2)])
    features = torch.randn(2, 8, 4, 4)
    cache: WeightKeyedCache[list] = WeightKeyedCache()

    def prepare() -> list:
        return [prepare_flow(block) for block in blocks]

    first = cache.get(blocks, prepare)
    assert cache.get(blocks, prepare) is first
    optimizer = torch.optim.SGD(blocks.parameters(), lr=0.5)
    blocks.train()
    hidden, jacobian = blocks[0](features)
    (hidden.square().sum() - jacobian.sum()).backward()
    optimizer.step()
    blocks.eval()
    second = cache.get(blocks, prepare)
    assert second is not first
    with torch.no_grad():
        assert torch.allclose(run_flow(second[0], features), blocks[0](features)[0], rtol=1e-5, atol=1e-5)
