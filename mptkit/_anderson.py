"""Anderson acceleration of the fit's sweeps (:mod:`mptkit._als`), for every task of a pool at once."""

from __future__ import annotations


# -- acceleration --------------------------------------------------------------------------------
class Mixer:
    """Anderson acceleration of the sweep ``r -> g(r)`` for every task of a pool: a ring of the
    last ``depth + 1`` pairs (g(r_k), g(r_k) - r_k); :meth:`mix` returns the combination of the
    g(r_k) whose combined residual is smallest (least squares over the residuals' differences, a
    tiny ridge), over each task's pairs since its last :meth:`restart`."""

    def __init__(self, depth: int, t: int, D: int, dtype):
        import torch

        self.m = depth + 1
        self.g = torch.zeros(t, self.m, D, dtype=dtype)
        self.f = torch.zeros(t, self.m, D, dtype=dtype)
        self.age = torch.zeros(t, dtype=torch.long)
        self.head = 0

    def push(self, r_in, r_out):
        import torch

        t = len(r_out)
        self.g[:, self.head] = r_out.reshape(t, -1)
        torch.sub(r_out.reshape(t, -1), r_in.reshape(t, -1), out=self.f[:, self.head])
        self.head = (self.head + 1) % self.m
        self.age = (self.age + 1).clamp_max(self.m)

    def restart(self, mask):
        self.age[mask] = 0

    def select(self, keep):
        self.g, self.f, self.age = self.g[keep], self.f[keep], self.age[keep]

    def mix(self, shape):
        import torch

        t, m = len(self.g), self.m
        order = [(self.head + k) % m for k in range(m)]  # oldest first
        M = (self.f @ self.f.transpose(1, 2))[:, order][:, :, order]  # (t, m, m) in time order
        # difference k is f[k + 1] - f[k]; valid where both pairs are in the task's history
        valid = (torch.arange(m - 1)[None, :] >= (m - self.age)[:, None]).to(M.dtype)  # (t, m - 1)
        A = M[:, 1:, 1:] - M[:, 1:, :-1] - M[:, :-1, 1:] + M[:, :-1, :-1]
        A = A * valid[:, :, None] * valid[:, None, :]
        b = (M[:, 1:, -1] - M[:, :-1, -1]) * valid
        ridge = A.diagonal(dim1=1, dim2=2).mean(1, keepdim=True) * 1e-10 + torch.finfo(M.dtype).tiny
        A = A + torch.diag_embed(ridge.expand(-1, m - 1))
        gamma = torch.linalg.solve(A, b.unsqueeze(2)).squeeze(2)  # (t, m - 1)
        beta = torch.zeros(t, m, dtype=M.dtype)
        beta[:, -1] = 1
        beta[:, 1:] -= gamma
        beta[:, :-1] += gamma
        coef = torch.empty_like(beta)
        coef[:, order] = beta  # back to ring slots
        return (coef.unsqueeze(1) @ self.g).reshape(t, *shape)
