import pytest

from fedge.quantization.backbone import BackboneError, quantization_problem


@pytest.mark.parametrize("quantization", ["fp32", "bf16", "nf4", "int8"])
def test_every_quantization_runs_on_this_cpu(quantization):
    assert quantization_problem(quantization, "cpu") is None  # bitsandbytes' CPU backend trains 4- and 8-bit here


def test_a_device_without_cuda_refuses_a_cuda_assignment_with_the_reason():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "no CUDA" in quantization_problem("nf4", "cuda")


def test_unknown_quantization_is_an_error():
    with pytest.raises(BackboneError, match="unknown quantization"):
        quantization_problem("fp8", "cpu")
