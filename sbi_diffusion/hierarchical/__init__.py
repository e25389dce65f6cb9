r"""Compositional inference for hierarchical models with many groups.

A hierarchical model has global parameters ``g`` shared by all groups and local
parameters ``l_j`` per group ``j``. :class:`HierarchicalNPE` is trained on
simulations of single groups; at inference it composes the single-group
posteriors of ``g`` over any number of groups and draws every ``l_j`` given
``g`` (Geffner et al. 2023, "Compositional score modeling for simulation-based
inference"; Arruda et al. 2025, "Compositional amortized inference for
large-scale hierarchical Bayesian models").

The global model may also be trained on simulated data sets of ``k`` groups
each and composed over blocks of ``k`` groups
(:mod:`~sbi_diffusion.hierarchical.blocks`), which divides the composition's
amplification of the network's error by ``sqrt(k)``.

Modules: :mod:`~sbi_diffusion.hierarchical.trainer` (training),
:mod:`~sbi_diffusion.hierarchical.posterior` (composed sampling),
:mod:`~sbi_diffusion.hierarchical.groups` (a group's shape, NaN padding and its
encoding), :mod:`~sbi_diffusion.hierarchical.blocks` (blocks of several groups)
and :mod:`~sbi_diffusion.hierarchical.embedding` (set embeddings of groups of
trials and of blocks of groups).
"""

from sbi_diffusion.hierarchical.blocks import GroupBlocks
from sbi_diffusion.hierarchical.embedding import (
    GlobalsAndGroup,
    GroupSetEmbedding,
    MaskedSetEmbedding,
    Standardize,
)
from sbi_diffusion.hierarchical.groups import GroupLayout
from sbi_diffusion.hierarchical.posterior import HierarchicalPosterior
from sbi_diffusion.hierarchical.trainer import HierarchicalNPE, check_local_prior

__all__ = [
    "GlobalsAndGroup",
    "GroupBlocks",
    "GroupLayout",
    "GroupSetEmbedding",
    "HierarchicalNPE",
    "HierarchicalPosterior",
    "MaskedSetEmbedding",
    "Standardize",
    "check_local_prior",
]
