"""The demo's data: seeded, deterministic loan applications, and a later, drifted batch.

Each row is one loan application by an applicant (the entity) at an event time. The label,
``defaulted``, follows a logistic model of the applicant's finances, so there is real signal to
learn; a few values are missing, as in life. The drifted batch comes from the months after:
incomes fall, rates rise, credit scores slip and a new loan purpose appears.

Same seed, same bytes: the files hash the same on every machine with the locked libraries, so
DVC's recorded version can be rebuilt instead of downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["DEMO_DATASETS", "DemoDataset", "generate", "write_csv"]

PURPOSES = ["debt_consolidation", "credit_card", "home_improvement", "car", "medical", "small_business", "other"]
_PURPOSE_RISK = {
    "debt_consolidation": 0.1,
    "credit_card": 0.0,
    "home_improvement": -0.2,
    "car": -0.1,
    "medical": 0.35,
    "small_business": 0.55,
    "other": 0.15,
    "crypto": 0.9,
}
_EMPLOYMENT_RISK = {"salaried": -0.2, "self_employed": 0.2, "contract": 0.35, "unemployed": 0.9}


@dataclass(frozen=True)
class DemoDataset:
    """One demo file: where it goes and how it is made."""

    path: str  # relative to the project root
    rows: int
    start: str
    end: str
    seed: int
    drifted: bool
    first_applicant: int = 1


DEMO_DATASETS: dict[str, DemoDataset] = {
    "v1": DemoDataset("data/loans.csv", 60_000, "2026-01-01", "2026-07-31", seed=20260101, drifted=False),
    "drift": DemoDataset(
        "data/loans_drift.csv", 12_000, "2026-08-01", "2026-09-30", seed=20260801, drifted=True, first_applicant=15_001
    ),
}


def generate(spec: DemoDataset) -> pd.DataFrame:
    """The dataset ``spec`` describes, as a DataFrame sorted by event time then applicant."""
    rng = np.random.default_rng(spec.seed)
    n = spec.rows
    applicants = rng.integers(spec.first_applicant, spec.first_applicant + n // 2, size=n)
    start, end = pd.Timestamp(spec.start, tz="UTC"), pd.Timestamp(spec.end, tz="UTC") + pd.Timedelta(days=1)
    seconds = rng.integers(0, int((end - start).total_seconds()), size=n)
    times = start + pd.to_timedelta(seconds, unit="s")

    age = np.clip(rng.normal(41, 12, n), 19, 80).round()
    income = np.exp(rng.normal(np.log(58_000), 0.45, n)) * (0.85 if spec.drifted else 1.0)
    credit = np.clip(rng.normal(690 - (30 if spec.drifted else 0), 60, n), 420, 850).round()
    prior_defaults = rng.poisson(np.where(credit < 620, 0.6, 0.12))
    open_accounts = rng.poisson(6, n) + 1
    months_employed = np.clip(rng.gamma(2.2, 30, n), 0, 480).round()
    employment = rng.choice(list(_EMPLOYMENT_RISK), n, p=[0.62, 0.18, 0.13, 0.07])
    home = rng.choice(["RENT", "OWN", "MORTGAGE", "OTHER"], n, p=[0.41, 0.16, 0.40, 0.03])
    regions = ["north", "south", "east", "west", "central"]
    region = rng.choice(regions, n, p=[0.12, 0.3, 0.18, 0.25, 0.15] if spec.drifted else [0.22, 0.2, 0.2, 0.2, 0.18])
    purposes = PURPOSES + (["crypto"] if spec.drifted else [])
    weights = np.array([0.3, 0.2, 0.12, 0.12, 0.08, 0.08, 0.1] + ([0.1] if spec.drifted else []))
    purpose = rng.choice(purposes, n, p=weights / weights.sum())
    term = rng.choice([12, 24, 36, 48, 60], n, p=[0.1, 0.2, 0.35, 0.15, 0.2])
    loan = np.clip(income * rng.uniform(0.05, 0.6, n), 1_000, 250_000).round(-2)
    rate = np.clip(4 + (760 - credit) * 0.045 + rng.normal(0, 1.2, n) + (3 if spec.drifted else 0), 3, 36).round(2)
    debt_to_income = np.clip(rng.beta(2.5, 6, n) + loan / income / term * 12 * 0.3, 0, 1.5).round(3)

    def z(values: np.ndarray) -> np.ndarray:
        return (values - values.mean()) / values.std()

    logit = (
        -2.3
        + 0.85 * z(debt_to_income)
        - 1.0 * z(credit)
        + 0.55 * prior_defaults
        + 0.45 * z(rate)
        + 0.3 * z(loan / income)
        - 0.25 * z(months_employed)
        + np.vectorize(_PURPOSE_RISK.get)(purpose)
        + np.vectorize(_EMPLOYMENT_RISK.get)(employment)
    )
    defaulted = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)

    frame = pd.DataFrame(
        {
            "applicant_id": [f"A{a:06d}" for a in applicants],
            "event_timestamp": times,
            "age": age.astype(int),
            "annual_income": income.round(-1).astype(int),
            "loan_amount": loan.astype(int),
            "term_months": term,
            "interest_rate": rate,
            "credit_score": pd.array(credit.astype(int), dtype="Int64"),
            "debt_to_income": debt_to_income,
            "open_accounts": open_accounts,
            "months_employed": pd.array(months_employed.astype(int), dtype="Int64"),
            "prior_defaults": prior_defaults,
            "home_ownership": home,
            "purpose": purpose,
            "employment_type": employment,
            "region": region,
            "defaulted": defaulted,
        }
    )
    # Missing values, as real applications have them.
    frame.loc[rng.random(n) < 0.02, "credit_score"] = pd.NA
    frame.loc[rng.random(n) < 0.04, "months_employed"] = pd.NA
    frame.loc[rng.random(n) < 0.01, "home_ownership"] = None
    frame = frame.drop_duplicates(["applicant_id", "event_timestamp"])
    return frame.sort_values(["event_timestamp", "applicant_id"], kind="stable").reset_index(drop=True)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` as the demo's CSV (fixed formats, so the bytes are reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    frame.to_csv(partial, index=False, lineterminator="\n", date_format="%Y-%m-%dT%H:%M:%SZ")
    partial.replace(path)  # never leave a half-written data file behind
