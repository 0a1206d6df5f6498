import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora import decompose


@st.composite
def matrix_and_rank(draw):
    m, n = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    r = draw(st.integers(1, min(m, n)))
    seed = draw(st.integers(0, 2**16))
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), r


@settings(max_examples=40, deadline=None)
@given(matrix_and_rank())
def test_factors_have_lora_shapes(case):
    matrix, r = case
    B, A = decompose(matrix, r)
    assert B.shape == (matrix.shape[0], r) and A.shape == (r, matrix.shape[1])
    assert B.dtype == A.dtype == matrix.dtype


@settings(max_examples=40, deadline=None)
@given(matrix_and_rank())
def test_error_is_the_discarded_singular_values(case):
    # Eckart-Young: ||M - B A||_F = sqrt(s_r^2 + s_{r+1}^2 + ...), the smallest any rank-r matrix can reach.
    matrix, r = case
    B, A = decompose(matrix, r)
    s = torch.linalg.svdvals(matrix)
    error = torch.linalg.matrix_norm(matrix - B @ A)
    assert torch.allclose(error, s[r:].square().sum().sqrt(), atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(matrix_and_rank())
def test_product_is_svd_truncation(case):
    matrix, r = case
    B, A = decompose(matrix, r)
    U, s, Vh = torch.linalg.svd(matrix, full_matrices=False)
    assert torch.allclose(B @ A, U[:, :r] @ torch.diag(s[:r]) @ Vh[:r], atol=1e-10)


def test_full_rank_reconstructs_exactly():
    matrix = torch.randn(6, 4, dtype=torch.float64)
    B, A = decompose(matrix, 4)
    assert torch.allclose(B @ A, matrix, atol=1e-12)


def test_factors_share_the_scale():
    # Each singular value is split as sqrt(s) * sqrt(s), so B and A have equal column/row norms.
    B, A = decompose(torch.randn(8, 5, dtype=torch.float64), 3)
    assert torch.allclose(B.norm(dim=0), A.norm(dim=1))


def test_half_precision_input_keeps_its_dtype():
    matrix = torch.randn(8, 6)
    B, A = decompose(matrix.half(), 2)
    assert B.dtype == A.dtype == torch.float16
    reference_B, reference_A = decompose(matrix.half().float(), 2)
    assert torch.allclose((B.float() @ A.float()), reference_B @ reference_A, atol=1e-2)


@pytest.mark.parametrize("shape", [(3, 5), (5, 3)])
def test_rank_beyond_the_smaller_side_is_refused(shape):
    with pytest.raises(ValueError, match=r"r=4 exceeds .* rank 3 of a \(\d, \d\) matrix"):
        decompose(torch.randn(shape), 4)
