r"""Condition masks, dependency (edge) masks and the training mask distribution.

A condition mask ``m in {0, 1}^D`` over the joint vector ``v = (theta, x)``
(theta first, flattened) marks observed variables (``m_i = 1``, held at their
clean value) and latent ones (``m_i = 0``, diffused); an edge mask restricts
attention to the dependency structure (Gloeckler et al. 2024, "All-in-one
simulation-based inference", Sec. 3.3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "MASK_KINDS",
    "MaskDistribution",
    "check_condition_mask",
    "check_conditional_mask",
    "check_edge_mask",
    "join_flat",
    "attention_mask",
]

MASK_KINDS = ("joint", "posterior", "likelihood", "random", "custom")
"""Kinds of condition masks :class:`MaskDistribution` mixes."""


def check_condition_mask(
    mask: Tensor | Sequence[bool], dim: int, batch: int | None = None
) -> Tensor:
    """Validate a condition mask and return it as a boolean tensor.

    Args:
        mask: ``(dim,)`` or ``(batch, dim)`` booleans (or 0/1 numbers); True marks
            an observed (conditioned-on) variable, False a latent one.
        dim: number of variables ``D = dim(theta) + dim(x)``.
        batch: if given, a ``(dim,)`` mask is expanded to ``(batch, dim)`` and a
            two-dimensional mask must have ``batch`` rows.

    Raises:
        ValueError: for a wrong shape or values other than 0 and 1.
    """
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        if not torch.all((mask == 0) | (mask == 1)):
            raise ValueError(
                "A condition mask holds booleans (True: observed, False: latent); "
                "got values other than 0 and 1."
            )
        mask = mask.bool()
    if mask.dim() not in (1, 2) or mask.shape[-1] != dim:
        raise ValueError(
            f"The condition mask has shape {tuple(mask.shape)}, but the model has "
            f"{dim} variables (theta then x, flattened). Pass a boolean mask of "
            f"shape ({dim},) or (batch, {dim})."
        )
    if batch is not None:
        if mask.dim() == 1:
            mask = mask.expand(batch, dim)
        elif mask.shape[0] not in (1, batch):
            raise ValueError(
                f"The condition mask has {mask.shape[0]} rows for a batch of {batch}; "
                f"pass one mask of shape ({dim},) or one row per sample."
            )
        else:
            mask = mask.expand(batch, dim)
    return mask


def check_conditional_mask(mask: Tensor | Sequence[bool], dim: int) -> Tensor:
    """Validate the condition mask of one conditional ``p(v_L | v_O)``: a single
    ``(dim,)`` mask (see :func:`check_condition_mask`) with at least one latent
    variable.

    Raises:
        ValueError: for a wrong shape, a batch of masks, or a mask that observes
            every variable.
    """
    mask = check_condition_mask(mask, dim)
    if mask.dim() != 1:
        raise ValueError(
            f"A conditional needs one mask of shape ({dim},), got {tuple(mask.shape)}."
        )
    if bool(mask.all()):
        raise ValueError(
            "The condition mask observes every variable, so the conditional has "
            "no free variable to sample. Set at least one entry to False."
        )
    return mask


def join_flat(theta: Tensor, x: Tensor) -> Tensor:
    """Flatten ``theta`` ``(B, *theta_shape)`` and ``x`` ``(B, *x_shape)`` and
    stack them into joint vectors ``(B, D)``, theta first."""
    return torch.cat(
        [theta.reshape(theta.shape[0], -1), x.reshape(x.shape[0], -1)], dim=1
    )


def check_edge_mask(edges: Tensor | None, dim: int) -> Tensor | None:
    """Validate a dependency structure ``(dim, dim)``; ``edges[i, j]`` True means
    variable ``i`` depends directly on variable ``j`` (either direction suffices).

    Raises:
        ValueError: for a wrong shape or non-boolean values.
    """
    if edges is None:
        return None
    edges = torch.as_tensor(edges)
    if edges.dtype != torch.bool:
        if not torch.all((edges == 0) | (edges == 1)):
            raise ValueError("The edge mask must hold booleans (or 0/1 values).")
        edges = edges.bool()
    if tuple(edges.shape) != (dim, dim):
        raise ValueError(
            f"The edge mask has shape {tuple(edges.shape)}, but the model has {dim} "
            f"variables. Pass a boolean ({dim}, {dim}) matrix whose entry [i, j] "
            "says whether variable i depends directly on variable j (theta first, "
            "then x), or None for full attention."
        )
    return edges


def attention_mask(edges: Tensor | None, condition_mask: Tensor) -> Tensor | None:
    r"""Attention mask from a dependency structure and a condition mask.

    .. math::
        A_{ij} = \big(E_{ij} \lor E_{ji} \lor [i = j]\big)
        \land \lnot\big(m_i \land \lnot m_j\big),

    i.e. the undirected dependency graph with self-loops, where observed
    variables (``m_i = 1``) do not attend to latent ones: their value is fixed,
    so they need no information about the latent variables (Gloeckler et al.
    2024, Sec. 3.3).

    Args:
        edges: ``(D, D)`` dependency structure, or None (full attention).
        condition_mask: ``(batch, D)`` booleans, True for observed.

    Returns:
        ``(batch, D, D)`` booleans (True: may attend), or None without edges.
    """
    if edges is None:
        return None
    dim = edges.shape[0]
    eye = torch.eye(dim, dtype=torch.bool, device=edges.device)
    graph = (edges | edges.T | eye)[None]
    observed = condition_mask[:, :, None]
    latent_key = ~condition_mask[:, None, :]
    return graph & ~(observed & latent_key)


class MaskDistribution:
    r"""A mixture distribution over condition masks for training.

    Each row draws one kind with probability proportional to ``weights``:

    - ``joint``: everything latent, the joint ``p(theta, x)``;
    - ``posterior``: ``theta`` latent, ``x`` observed, ``p(theta | x)``;
    - ``likelihood``: ``theta`` observed, ``x`` latent, ``p(x | theta)``;
    - ``random``: each variable observed independently with probability ``p``,
      ``p`` drawn uniformly from ``random_observed_probs`` (the Simformer uses
      Bernoulli masks with ``p = 0.3`` and ``0.7``); at least one variable stays
      latent;
    - ``custom``: one of the user's ``custom_masks``, uniformly.

    Args:
        theta_dim: number of parameters.
        x_dim: number of data dimensions.
        weights: unnormalised mixture weights by kind; defaults to
            ``{"joint": 1, "posterior": 1, "likelihood": 1, "random": 2}``.
        random_observed_probs: observation probabilities of random masks.
        custom_masks: ``(k, D)`` masks for the ``custom`` kind.

    Raises:
        ValueError: for unknown kinds, negative or all-zero weights, or
            probabilities outside ``[0, 1)``.
    """

    default_weights: Mapping[str, float] = {
        "joint": 1.0,
        "posterior": 1.0,
        "likelihood": 1.0,
        "random": 2.0,
    }

    def __init__(
        self,
        theta_dim: int,
        x_dim: int,
        weights: Mapping[str, float] | None = None,
        random_observed_probs: Sequence[float] = (0.3, 0.7),
        custom_masks: Tensor | None = None,
    ):
        self.theta_dim, self.x_dim = int(theta_dim), int(x_dim)
        self.dim = self.theta_dim + self.x_dim
        weights = dict(self.default_weights if weights is None else weights)
        unknown = set(weights) - set(MASK_KINDS)
        if unknown:
            raise ValueError(
                f"Unknown mask kinds {sorted(unknown)}; pass weights for kinds among "
                f"{list(MASK_KINDS)}."
            )
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(
                f"Mask weights must be non-negative and not all zero, got {weights}."
            )
        if weights.get("custom", 0) > 0 and custom_masks is None:
            raise ValueError(
                "The 'custom' mask kind has a weight but no custom_masks were given; "
                f"pass custom_masks of shape (k, {self.dim})."
            )
        probs = [float(p) for p in random_observed_probs]
        if not probs or any(not 0.0 <= p < 1.0 for p in probs):
            raise ValueError(
                "random_observed_probs must be a non-empty list of probabilities in "
                f"[0, 1), got {random_observed_probs}."
            )
        self.kinds = [k for k in MASK_KINDS if weights.get(k, 0) > 0]
        self.weights = torch.tensor([float(weights[k]) for k in self.kinds])
        self.random_observed_probs = torch.tensor(probs)
        self.custom_masks = (
            None
            if custom_masks is None
            else check_condition_mask(custom_masks, self.dim).reshape(-1, self.dim)
        )
        if self.custom_masks is not None and self.custom_masks.all(dim=1).any():
            raise ValueError(
                "A custom mask observes every variable; each mask needs at least "
                "one latent (False) entry."
            )

    def fixed_mask(self, kind: str) -> Tensor:
        """The ``(D,)`` mask of ``joint``, ``posterior`` or ``likelihood``."""
        theta_part = kind == "likelihood"
        x_part = kind == "posterior"
        return torch.cat(
            [
                torch.full((self.theta_dim,), theta_part, dtype=torch.bool),
                torch.full((self.x_dim,), x_part, dtype=torch.bool),
            ]
        )

    def sample(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw ``batch`` masks, shape ``(batch, D)`` (True: observed)."""
        kind = torch.multinomial(
            self.weights, batch, replacement=True, generator=generator
        )
        masks = torch.zeros(batch, self.dim, dtype=torch.bool)
        for index, name in enumerate(self.kinds):
            rows = kind == index
            num = int(rows.sum())
            if num == 0:
                continue
            if name == "random":
                pick = torch.randint(
                    len(self.random_observed_probs), (num,), generator=generator
                )
                p = self.random_observed_probs[pick][:, None]
                drawn = torch.rand(num, self.dim, generator=generator) < p
                full = drawn.all(dim=1)
                if full.any():
                    free = torch.randint(
                        self.dim, (int(full.sum()),), generator=generator
                    )
                    drawn[full.nonzero()[:, 0], free] = False
                masks[rows] = drawn
            elif name == "custom":
                pick = torch.randint(
                    self.custom_masks.shape[0], (num,), generator=generator
                )
                masks[rows] = self.custom_masks[pick]
            else:
                masks[rows] = self.fixed_mask(name)
        return masks.to(device) if device is not None else masks

    def __repr__(self) -> str:
        weights = dict(zip(self.kinds, self.weights.tolist(), strict=True))
        return f"MaskDistribution(weights={weights})"
