"""The best rank-r approximation of a matrix, as a product of two thin factors.

LoRA (Hu et al. 2021, section 4.1) writes a weight update as ``ΔW = B A`` with ``B`` of shape ``(m, r)`` and ``A`` of
shape ``(r, n)``, so its rank is at most ``r``. Which rank-r matrix is closest to a given ``M`` (m, n)? Eckart and Young
(1936): cut the singular value decomposition ``M = U diag(s) Vᵀ`` after the ``r`` largest singular values. In the
Frobenius norm the error of that truncation is the smallest possible and equals the root of the sum of the squared
singular values it discards:

    ‖M - B A‖_F = sqrt(s[r]² + s[r+1]² + ...)

We split each kept singular value evenly between the factors, ``B = U_r diag(sqrt(s_r))`` and
``A = diag(sqrt(s_r)) V_rᵀ``, so neither factor carries all the scale.
"""

import torch


def check_rank(r):
    """Raise ValueError unless ``r`` is a positive int (``True`` is an int to Python, but not a rank)."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be a positive int, got {r!r}")


def decompose(matrix, r):
    """Return ``(B, A)``, shapes ``(m, r)`` and ``(r, n)``, whose product is the best rank-r approximation of ``matrix``."""
    check_rank(r)
    if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2:
        shape = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
        raise ValueError(f"decompose needs a 2-D tensor, got {shape}")
    if r > min(matrix.shape):
        raise ValueError(f"r={r} exceeds the largest possible rank {min(matrix.shape)} of a {tuple(matrix.shape)} matrix")
    # SVD is not implemented for half precision; float64 input keeps its precision.
    work = matrix if matrix.dtype == torch.float64 else matrix.float()
    U, s, Vh = torch.linalg.svd(work, full_matrices=False)  # (m, k), (k,), (k, n) with k = min(m, n)
    root = s[:r].sqrt()  # (r,)
    B = U[:, :r] * root  # (m, r): column j scaled by sqrt(s_j)
    A = root[:, None] * Vh[:r]  # (r, n): row j scaled by sqrt(s_j)
    return B.to(matrix.dtype), A.to(matrix.dtype)
