"""What a reviewer reads of the similar cases: their rank among the cases compared.

The cosine of two descriptors orders the library's cases, but its size says little: images
of one kind share most of what is described, so unrelated ones score well above 0.5 (0.59
between B-mode images of different classes, README), and the figure differs from one kind
and one library to the next. The finding and the study page therefore name each case by its
rank, "1st of 12 compared", and keep the cosine in the evidence only.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from usreview.processing.similarity import (
    VERSION,
    Descriptor,
    LibraryEntry,
    ordinal,
    rank,
    similar_cases_finding,
)
from usreview.review.results import _case_links, _finding_html
from usreview.teaching import case_name


def _unit(*values: float) -> tuple[float, ...]:
    norm = math.sqrt(sum(v * v for v in values))
    return tuple(v / norm for v in values)


def _entry(case: str, vector: tuple[float, ...], kind: str = "bmode", version: str = VERSION):
    return LibraryEntry(case, f"{case}.9", Descriptor(kind, vector, version))


@pytest.mark.parametrize(
    ("number", "word"),
    [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"),
     (13, "13th"), (21, "21st"), (22, "22nd"), (101, "101st"), (111, "111th")],
)  # fmt: skip
def test_ordinals(number: int, word: str) -> None:
    assert ordinal(number) == word


def test_matches_carry_their_rank_among_the_cases_compared() -> None:
    query = Descriptor("bmode", _unit(1.0, 0.0, 0.0))
    library = [
        _entry("1.2.9.1", _unit(0.9, 0.1, 0.0)),
        _entry("1.2.9.1", _unit(0.5, 0.5, 0.0)),  # the same case again: counted once
        _entry("1.2.9.2", _unit(0.7, 0.7, 0.0)),
        _entry("1.2.9.3", _unit(0.2, 0.9, 0.3)),
        _entry("1.2.9.4", _unit(0.0, 0.0, 1.0)),
        _entry("1.2.9.5", _unit(1.0, 0.0, 0.0), kind="pw_doppler"),  # another kind
        _entry("1.2.9.6", _unit(1.0, 0.0, 0.0), version="1.0"),  # another descriptor
    ]
    matches = rank(query, library, limit=3)
    assert [(m.entry.case_uid, m.rank, m.compared) for m in matches] == [
        ("1.2.9.1", 1, 4),
        ("1.2.9.2", 2, 4),
        ("1.2.9.3", 3, 4),
    ]
    assert [m.as_dict()["rank"] for m in matches] == [1, 2, 3]


def _finding() -> dict[str, Any]:
    query = Descriptor("bmode", _unit(1.0, 0.0))
    library = [_entry(f"1.2.9.{n}", _unit(1.0, n / 10)) for n in range(1, 6)]
    return similar_cases_finding(rank(query, library, limit=3))


def test_the_finding_names_ranks_not_cosines() -> None:
    finding = _finding()
    names = [case_name(f"1.2.9.{n}") for n in (1, 2, 3)]
    assert finding["text"] == (
        "Most similar cases of the case library (5 compared), closest first: "
        f"{names[0]} (1st), {names[1]} (2nd), {names[2]} (3rd)"
    )
    evidence = finding["evidence"]
    assert evidence["compared"] == 5 and evidence["method"] == f"similarity {VERSION}"
    assert [m["rank"] for m in evidence["matches"]] == [1, 2, 3]
    similarities = [m["similarity"] for m in evidence["matches"]]  # kept, for ordering
    assert similarities == sorted(similarities, reverse=True) and similarities[0] > 0.99


def test_the_study_page_shows_the_rank_and_how_many_were_compared() -> None:
    finding = _finding()
    shown = _finding_html(finding)
    assert "usreview-similar" in shown and "Most similar cases of 5 compared" in shown
    ranks = [f'<span class="usreview-case-rank">{w}</span>' for w in ("1st", "2nd", "3rd")]
    assert all(r in shown for r in ranks) and shown.index(ranks[0]) < shown.index(ranks[2])
    for match in finding["evidence"]["matches"]:  # no cosine, however rounded
        assert f"{match['similarity']:.2f}" not in shown
    assert "Only the order means something" in shown  # the tooltip says why


def test_a_finding_made_before_ranks_shows_the_order_alone() -> None:
    """Similarity 2.0 findings published before this change hold the cosine only: their
    order is the rank, and the number compared is not known."""
    evidence = {
        "matches": [
            {"case_uid": "1.2.9.1", "sop_instance_uid": "1.2.9.1.9", "similarity": 0.9312},
            {"case_uid": "1.2.9.2", "sop_instance_uid": "1.2.9.2.9", "similarity": 0.9011},
        ],
        "method": "similarity 2.0",
    }
    shown = _case_links(evidence)
    assert shown.startswith('<span title="') and "Most similar cases, closest first:" in shown
    assert '"usreview-case-rank">1st</span>' in shown and '"usreview-case-rank">2nd</span>' in shown
    assert "0.93" not in shown and "0.90" not in shown and " compared, closest" not in shown


@pytest.mark.parametrize("rank_value", [0, -1, "1", True, 1.5])
def test_a_malformed_rank_shows_the_finding_as_text(rank_value: Any) -> None:
    finding = _finding()
    finding["evidence"]["matches"][0]["rank"] = rank_value
    assert _case_links(finding["evidence"]) == ""
    shown = _finding_html(finding)
    assert "usreview-similar" not in shown and "Most similar cases of the case library" in shown
