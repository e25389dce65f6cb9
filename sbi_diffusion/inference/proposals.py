r"""Which proposals the trainers accept in ``append_simulations(..., proposal=)``.

The denoising loss learns the posterior under the distribution the training
``theta`` were drawn from. Simulations from the prior, or from a prior truncated
to a region (Deistler et al. 2022, truncated sequential NPE, TSNPE), need no
correction: a truncated prior is proportional to the prior on its support,

.. math::
    \tilde p(\theta) = \frac{p(\theta)\, 1[\theta \in S]}{P(S)},

so every round's posterior, ``p(x | theta) p~(theta) / p~(x)``, equals the
true posterior on ``S``, and training on all rounds together with the
first-round loss targets the true posterior wherever it puts its mass (inside
``S`` when ``S`` is a ``1 - epsilon`` highest-density region). Any other
proposal (a posterior used as the proposal, as in SNPE-C) would need an
importance-weighted or atomic loss correction, which these trainers do not
implement; it is refused with an error that names the supported path.
"""

from __future__ import annotations

from typing import Any

from torch.distributions import Distribution

__all__ = ["PRIOR", "TRUNCATED_PRIOR", "proposal_kind"]

PRIOR = "prior"
TRUNCATED_PRIOR = "truncated_prior"

UNSUPPORTED_PROPOSAL = (
    "{what} is not a supported proposal. The diffusion, flow-matching and "
    "consistency trainers learn without a proposal correction, so they accept "
    "simulations from the prior (proposal=None or the prior) or from a "
    "truncated prior, which is proportional to the prior on its support: use "
    "truncated sequential inference, e.g.\n"
    "    accept_reject_fn = get_density_thresholder(posterior, quantile=1e-4)\n"
    "    proposal = RestrictedPrior(prior, accept_reject_fn, "
    "sample_with='rejection')\n"
    "(from sbi.utils import RestrictedPrior, get_density_thresholder), and train "
    "with force_first_round_loss=True. A custom proposal whose density is "
    "proportional to the prior on its support can declare it with an attribute "
    "`proportional_to_prior = True`."
)


def proposal_kind(proposal: Any, prior: Distribution | None) -> str:
    """:data:`PRIOR` or :data:`TRUNCATED_PRIOR` for an accepted proposal.

    Accepted: None or the prior itself; sbi's ``RestrictedPrior`` of the prior;
    any object with ``proportional_to_prior = True``.

    Raises:
        ValueError: for anything else (a posterior, another distribution), or a
            ``RestrictedPrior`` of another prior.
    """
    if proposal is None or proposal is prior:
        return PRIOR
    from sbi.utils import RestrictedPrior

    if isinstance(proposal, RestrictedPrior):
        restricted = proposal._prior
        if prior is not None and restricted is not prior:
            same = type(restricted) is type(prior) and getattr(
                restricted, "event_shape", None
            ) == getattr(prior, "event_shape", None)
            if not same:
                raise ValueError(
                    "The RestrictedPrior restricts another prior than the "
                    f"trainer's ({type(restricted).__name__} against "
                    f"{type(prior).__name__}); build it from the trainer's prior."
                )
        return TRUNCATED_PRIOR
    if getattr(proposal, "proportional_to_prior", False) is True:
        return TRUNCATED_PRIOR
    raise ValueError(UNSUPPORTED_PROPOSAL.format(what=type(proposal).__name__))
