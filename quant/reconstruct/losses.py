"""Block reconstruction losses: MSE, plain KL (head) and the FIMA-Q Fisher losses (diagonal, low-rank, DPLR).

Fisher losses (METHODS.md section 3). The KL between the model's tempered output and the float output is locally
``1/2 dz^T F dz`` in the block output ``z``. ``FisherState`` holds ``r <= k`` snapshot rows, each taken by
``fisher.fisher_snapshot``: ``g = mean_n |dKL/dz|`` (row of ``G``) and ``delta = mean_n |z_q - z_fp|`` (row of
``Delta``), both flattened to ``D`` features. With ``e = |z_pred - z_fp|`` per sample ([B, D])::

    low-rank  = mean_B( a_b (Delta Delta^T + lambda I)^-1 a_b^T ),  a_b = e_b |G|^T   ([B, r])
    diagonal  = mean_{B,D}( e^2 * mean_r |G| )
    fisher_lr = low-rank / low-rank_0,  fisher_diag = diagonal / diagonal_0,  fisher_dplr = sum of both

where ``_0`` is the term's value on the training batch of the iteration at which ``G`` last changed (as the
reference implementation does). ``lambda = ridge * trace(Delta Delta^T) / r`` (``ridge`` = 1e-6 by default) is a
tiny ridge we add so that exactly collinear snapshot rows cannot make the inverse fail (the paper inverts
``Delta Delta^T`` as is). On vit-digits the snapshot Gram matrices have eigenvalue ratios down to ~1e-4 at k = 5;
a ridge of 1e-2 did not help (W3A3: 97.4 % / KL 0.0177 against 97.6 % / 0.0147).

``mse`` is BRECQ's ``lp_loss``: squared error summed over the token/spatial positions, averaged over the batch
and channels, divided by 10 (the scale the reference implementation uses against the rounding regulariser).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["FISHER_LOSSES", "LOSSES", "FisherState", "kl_loss", "mse_loss"]

LOSSES = ("mse", "fisher_diag", "fisher_lr", "fisher_dplr")
FISHER_LOSSES = ("fisher_diag", "fisher_lr", "fisher_dplr")
DEFAULT_RIDGE = 1e-6


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over positions (all dims but batch and channel), mean over batch/channels, / 10."""
    err = (pred - target).pow(2)
    if err.dim() > 2:
        err = err.flatten(1, -2).sum(dim=1)
    return err.mean() / 10.0


def kl_loss(pred_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KL(softmax(target / T) || softmax(pred / T))``, mean over the batch (plain KL for the head: T = 1)."""
    log_p = F.log_softmax(pred_logits / temperature, dim=-1)
    log_t = F.log_softmax(target_logits / temperature, dim=-1)
    return F.kl_div(log_p, log_t, log_target=True, reduction="batchmean")


class FisherState:
    """Snapshot rows ``G``/``Delta`` of one block and the normalisers of the Fisher loss terms."""

    def __init__(self, kind: str, ridge: float = DEFAULT_RIDGE) -> None:
        if kind not in FISHER_LOSSES:
            raise ValueError(f"Fisher loss must be one of {FISHER_LOSSES}, got {kind!r}")
        self.kind = kind
        self.ridge = float(ridge)
        self.g: torch.Tensor | None = None  # [r, D] = |G|
        self.delta: torch.Tensor | None = None  # [r, D]
        self.g_mean: torch.Tensor | None = None  # [D] = mean_r |G|
        self.inv: torch.Tensor | None = None  # [r, r]
        self.norms: dict[str, torch.Tensor] = {}
        self.renormalize = False

    @property
    def rank(self) -> int:
        return 0 if self.g is None else int(self.g.shape[0])

    @torch.no_grad()
    def add(self, g_row: torch.Tensor, delta_row: torch.Tensor) -> None:
        """Append one snapshot (rows of D features); the next loss call resets the normalisers."""
        g_row, delta_row = g_row.reshape(1, -1).abs(), delta_row.reshape(1, -1).abs()
        self.g = g_row if self.g is None else torch.cat([self.g, g_row])
        self.delta = delta_row if self.delta is None else torch.cat([self.delta, delta_row])
        self.g_mean = self.g.mean(dim=0)
        gram = (self.delta @ self.delta.T).double()
        ridge = self.ridge * torch.clamp(gram.diagonal().mean(), min=1e-30)
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        self.inv = torch.linalg.inv(gram + ridge * eye).to(self.g.dtype)
        self.renormalize = True

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unnormalised ``lowrank``/``diag`` terms needed by this loss kind."""
        if self.g is None:
            raise RuntimeError("no Fisher snapshot taken yet")
        e = (pred - target).abs().reshape(pred.shape[0], -1)
        out = {}
        if self.kind in ("fisher_lr", "fisher_dplr"):
            a = e @ self.g.T  # [B, r]
            out["lowrank"] = ((a @ self.inv) * a).sum(dim=1).mean()
        if self.kind in ("fisher_diag", "fisher_dplr"):
            out["diag"] = (e.pow(2) * self.g_mean).mean()
        return out

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The normalised loss: each term divided by its value when ``G`` last changed, summed."""
        terms = self.terms(pred, target)
        if self.renormalize:
            self.norms = {k: torch.clamp(v.detach(), min=1e-30) for k, v in terms.items()}
            self.renormalize = False
        return sum(v / self.norms[k] for k, v in terms.items())
