"""The matmul floor of `bench step --floor`: FLOP counts by hand, products counted in forward and backward
and attributed to the phase running, operands rebuilt with their layout."""

import pytest
import torch

from grpolab.bench.matmul_floor import MatmulRecorder, layout, matmul_flops, random_operand, time_matmuls
from grpolab.training.metrics import Timer


def operands(*shapes):
    return tuple((shape, None, torch.float32, "cpu") for shape in shapes)


def test_flops_by_hand():
    assert matmul_flops("aten.mm.default", operands((2, 3), (3, 4))) == 2 * 2 * 3 * 4  # 48
    assert matmul_flops("aten.addmm.default", operands((4,), (2, 3), (3, 4))) == 48  # the bias is not a product
    assert matmul_flops("aten.bmm.default", operands((5, 2, 3), (5, 3, 4))) == 240
    assert matmul_flops("aten.baddbmm.default", operands((5, 1, 4), (5, 2, 3), (5, 3, 4))) == 240
    assert matmul_flops("mkldnn._linear_pointwise.default", operands((2, 7, 3), (4, 3))) == 2 * 14 * 3 * 4


def test_forward_and_backward_products_are_counted_in_their_phase():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3, bias=False)
    x = torch.randn(8, 5, requires_grad=True)
    timer = Timer()
    with MatmulRecorder(phase=lambda: Timer.current) as recorder:
        with timer("forward"):
            y = layer(x)
        with timer("backward"):
            y.sum().backward()
        torch.mm(x.detach(), x.detach().T)  # outside any phase
    phases = {}
    for (phase, _name, _, _), count in recorder.counts.items():
        phases[phase] = phases.get(phase, 0) + count
    assert phases == {"forward": 1, "backward": 2, "other": 1}  # dX = dY W and dW = dY^T X
    assert Timer.current is None


def test_timer_restores_the_outer_phase_even_after_an_error():
    timer = Timer()
    with timer("outer"):
        with pytest.raises(ValueError), timer("inner"):
            assert Timer.current == "inner"
            raise ValueError("boom")
        assert Timer.current == "outer"
    assert Timer.current is None and "inner" not in timer.phases and timer.phases["outer"] > 0


def test_a_transposed_operand_keeps_its_strides():
    view = torch.randn(6, 4).T
    rebuilt = random_operand(*layout(view))
    assert rebuilt.shape == view.shape and rebuilt.stride() == view.stride() and rebuilt.dtype == view.dtype


def test_time_matmuls_sums_count_times_fastest_run_and_flops():
    with MatmulRecorder(phase=lambda: "p") as recorder:
        a, b = torch.randn(16, 8), torch.randn(8, 4)
        for _ in range(3):
            torch.mm(a, b)
        torch.bmm(torch.randn(2, 16, 8), torch.randn(2, 8, 4))
    timed = time_matmuls(recorder.counts, repeats=3)
    assert timed["products"] == 4
    assert timed["tflop"] * 1e12 == pytest.approx(3 * 2 * 16 * 8 * 4 + 2 * 2 * 16 * 8 * 4)
    assert set(timed["by_phase"]) == {"p"} and timed["by_phase"]["p"] > 0
    assert timed["seconds"] == pytest.approx(timed["by_phase"]["p"])
    assert timed["tflop_by_phase"] == {"p": pytest.approx(timed["tflop"])}
