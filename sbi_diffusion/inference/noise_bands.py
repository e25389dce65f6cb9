r"""A network that is piecewise in the noise level: one expert per noise band.

With few simulations the noise levels of a diffusion model do not converge
together. The low noise levels (the fine shape of the posterior) overfit the
training set early, while the high noise levels, where the denoiser learns the
posterior's location ``E[theta | x]``, still improve long after the validation
loss summed over all levels has passed its minimum. Early stopping on that sum
keeps the low levels and stops the high ones too soon, and the posterior's mean
stays pulled towards the prior mean.

:class:`NoiseBandNet` combines copies of one network taken at different points
of the training, expert ``k`` answering for the noise inputs of band ``k``:

.. math::
    F(z, c, c_{noise}) = F_{w_k}(z, c, c_{noise}), \qquad
    c_{noise} \in [e_{k-1}, e_k),

where ``w_k`` are the weights with the lowest validation loss on band ``k``
(``e_0 = -inf``, ``e_K = inf``). Separate denoisers for separate noise ranges
are the "ensemble of expert denoisers" of Balaji et al. 2022 (eDiff-I); here the
experts share one training run and differ only in where it is stopped.
:class:`NoiseBandSelection` keeps those weights; the stopping rule
:class:`~sbi_diffusion.inference.stopping.NoiseBandStopping` (``train(noise_bands=K)``)
drives it.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy

import torch
from torch import Tensor, nn

from sbi_diffusion.nets.registry import has_trainable_parameters
from sbi_diffusion.path.parameterizations import PathPoint

__all__ = ["NoiseBandNet", "NoiseBandSelection"]


class NoiseBandNet(nn.Module):
    """Dispatches each row to the expert of its noise band.

    The wrapped networks take ``(z, condition, time)`` with the noise input
    ``time`` of shape ``(batch,)`` (one noise level per row) or ``(batch, D)``
    (one per variable, as in the joint model, where observed variables carry the
    row's noise input and missing ones a larger one: the row's band is that of
    its smallest entry). Further positional arguments are passed through.

    Args:
        experts: ``K`` networks of the same architecture, lowest noise first.
        edges: ``K - 1`` increasing noise inputs separating the bands.
        null_conditions: ``(K, e)`` null-condition rows of the experts, or None.
            Models trained with condition dropout mark the null condition with a
            last entry 1; with this argument every expert sees its own null row
            (the null embedding is trained together with the weights).

    Raises:
        ValueError: if the number of edges is not ``K - 1``, the edges do not
            increase, or the null rows do not match the experts.
    """

    def __init__(
        self,
        experts: Sequence[nn.Module],
        edges: Tensor,
        null_conditions: Tensor | None = None,
    ):
        super().__init__()
        experts = list(experts)
        edges = torch.as_tensor(edges, dtype=torch.float32).reshape(-1)
        if len(experts) < 1 or edges.numel() != len(experts) - 1:
            raise ValueError(
                f"{len(experts)} experts need {max(len(experts) - 1, 0)} band "
                f"edges, got {edges.numel()}."
            )
        if edges.numel() > 1 and not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError(f"Band edges must increase, got {edges.tolist()}.")
        if null_conditions is not None and null_conditions.shape[0] != len(experts):
            raise ValueError(
                f"{null_conditions.shape[0]} null-condition rows for "
                f"{len(experts)} experts."
            )
        self.experts = nn.ModuleList(experts)
        self.register_buffer("edges", edges)
        self.register_buffer(
            "null_conditions",
            None if null_conditions is None else null_conditions.detach().clone(),
        )

    @property
    def broadcasts_inputs(self) -> bool:
        """True if every expert broadcasts its inputs (shared-time calls only)."""
        return all(getattr(e, "broadcasts_inputs", False) for e in self.experts)

    def band_of(self, time: Tensor) -> Tensor:
        """Band index of each row of the noise input ``(batch,)`` or
        ``(batch, D)``."""
        key = time if time.dim() <= 1 else time.amin(dim=-1)
        return torch.bucketize(key.contiguous(), self.edges.to(key), right=True)

    def _expert_condition(self, k: int, condition: Tensor) -> Tensor:
        if self.null_conditions is None:
            return condition
        null = self.null_conditions[k].to(condition)
        is_null = condition[..., -1:] == 1
        return torch.where(is_null, null.expand_as(condition), condition)

    def _call(self, k: int, z: Tensor, condition: Tensor, time: Tensor, *rest):
        return self.experts[k](z, self._expert_condition(k, condition), time, *rest)

    def forward(self, z: Tensor, condition: Tensor, time: Tensor, *rest) -> Tensor:
        """Output of the expert of each row's band."""
        time_rows = time.reshape(-1) if time.dim() <= 1 else time
        bands = self.band_of(time_rows)
        first = int(bands.reshape(-1)[0])
        if bool((bands == first).all()):
            return self._call(first, z, condition, time, *rest)
        if time_rows.shape[0] != z.shape[0] or condition.shape[0] != z.shape[0]:
            raise ValueError(
                "Rows in several noise bands need z, the condition and the noise "
                "input with one row each."
            )
        order = torch.argsort(bands, stable=True)
        counts = torch.bincount(bands, minlength=len(self.experts)).tolist()
        pieces, start = [], 0
        for k, count in enumerate(counts):
            if count == 0:
                continue
            rows = order[start : start + count]
            start += count
            args = [a[rows] if torch.is_tensor(a) and a.dim() > 0 else a for a in rest]
            pieces.append(
                self._call(k, z[rows], condition[rows], time_rows[rows], *args)
            )
        return torch.cat(pieces)[torch.argsort(order)]


class NoiseBandSelection:
    r"""Per-band early stopping: the weights with the lowest validation loss on
    each of ``K`` noise bands, combined into a :class:`NoiseBandNet`.

    The validation rows are split into ``K`` bands of equal size by their times
    (quantiles of the training time distribution). After every epoch
    :meth:`update` compares the mean validation loss of each band with its best
    so far and keeps the network's weights where it improved; :meth:`build`
    returns a copy of the model whose network is the :class:`NoiseBandNet` of
    those weights. With ``K = 1`` this is ordinary early stopping.
    ``best_updates[k]`` is the update (epoch) whose weights band ``k`` keeps.

    The model must call its network as ``net(z, condition, time, ...)`` with the
    noise input ``log(sigma / alpha) / 4`` (every denoiser of this package does).
    Weights outside the network (a trainable embedding net) are shared by the
    bands, so models with one are refused.

    Args:
        model: the model being trained (checked here; :meth:`update` and
            :meth:`build` take the model whose weights are kept, e.g. its EMA).
        val_times: times of the validation rows ``(N,)``.
        num_bands: ``K``.

    Raises:
        ValueError: for ``K < 1``, more bands than distinct validation times, a
            model without a ``net``, or one with a trainable embedding net.
    """

    def __init__(self, model: nn.Module, val_times: Tensor, num_bands: int):
        if isinstance(num_bands, bool) or int(num_bands) != num_bands or num_bands < 1:
            raise ValueError(
                f"noise_bands must be a positive integer, got {num_bands}."
            )
        self.num_bands = int(num_bands)
        if self.num_bands > 1 and not isinstance(
            getattr(model, "net", None), nn.Module
        ):
            raise ValueError(
                f"noise_bands > 1 needs a model with a network `net`; "
                f"{type(model).__name__} has none."
            )
        embedding = getattr(model, "embedding_net", None)
        if self.num_bands > 1 and has_trainable_parameters(embedding):
            raise ValueError(
                "noise_bands > 1 is not available with a trainable embedding net: "
                "the bands would share an embedding trained to a different point. "
                "Use noise_bands=1, or a fixed (pre-trained, frozen) embedding."
            )
        times = val_times.detach().reshape(-1)
        distinct = torch.unique(times)
        if distinct.numel() < self.num_bands:
            raise ValueError(
                f"noise_bands={self.num_bands} but the validation set has only "
                f"{distinct.numel()} distinct times; use fewer bands or more "
                "validation simulations."
            )
        ordered = torch.sort(times).values
        n = ordered.numel()
        cut = [ordered[(k * n) // self.num_bands] for k in range(1, self.num_bands)]
        self.time_edges = torch.stack(cut) if cut else times.new_zeros(0)
        self.bands = torch.bucketize(times, self.time_edges, right=True)
        self.best_losses = [float("inf")] * self.num_bands
        self.states: list[dict | None] = [None] * self.num_bands
        self.null_rows: list[Tensor | None] = [None] * self.num_bands
        self.best_updates = [0] * self.num_bands
        self.num_updates = 0

    def band_losses(self, row_losses: Tensor) -> list[float]:
        """Mean validation loss of each band."""
        bands = self.bands.to(row_losses.device)
        return [
            float(row_losses[bands == k].mean()) if bool((bands == k).any()) else 0.0
            for k in range(self.num_bands)
        ]

    def update(self, row_losses: Tensor, model: nn.Module) -> bool:
        """Keep ``model``'s weights for each band whose loss improved; True if one
        did."""
        improved = False
        self.num_updates += 1
        for k, loss in enumerate(self.band_losses(row_losses)):
            if loss < self.best_losses[k]:
                improved = True
                self.best_losses[k] = loss
                self.best_updates[k] = self.num_updates
                self.states[k] = deepcopy(model.net.state_dict())
                if getattr(model, "null_flag", False):
                    self.null_rows[k] = model._null_condition_row().detach().clone()
        return improved

    def build(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` whose network is the banded combination (the model
        itself, copied, for one band)."""
        combined = deepcopy(model)
        if self.num_bands == 1 or any(s is None for s in self.states):
            return combined
        experts = []
        for state in self.states:
            expert = deepcopy(model.net)
            expert.load_state_dict(state)
            experts.append(expert)
        device = next(model.net.parameters()).device
        point = PathPoint(*model.schedule.derivatives(self.time_edges.to(device)))
        edges = model.parameterization.noise_input(point)
        nulls = None
        if getattr(model, "null_flag", False):
            nulls = torch.stack(self.null_rows)
        combined.net = NoiseBandNet(experts, edges, nulls)
        return combined
