"""StreamDelta: its field order pinned, crosses processes as a tuple, piled-up deltas coalesce."""
from __future__ import annotations

import dataclasses

from pagedllm.outputs import WIRE_FIELDS, StreamDelta, coalesce, from_wire, to_wire


def _delta(rid: str, ids: list[int], text: str, **kw) -> StreamDelta:
    return StreamDelta(request_id=rid, token_ids=ids, text=text, **kw)


def test_positional_construction_follows_the_pinned_field_order():
    """Hot paths build deltas by position (StreamDelta's NOTE): the order is WIRE_FIELDS'."""
    by_position = StreamDelta("r", 2, [7], "t", True, "length", None, 3, 4, "e", "internal")
    assert by_position == StreamDelta(request_id="r", index=2, token_ids=[7], text="t",
                                      finished=True, finish_reason="length", logprobs=None,
                                      num_prompt_tokens=3, num_output_tokens=4, error="e",
                                      error_code="internal")


def test_the_wire_format_round_trips_every_field():
    # Every field a distinct value: a swap of two fields in to_wire or from_wire shows.
    d = StreamDelta(request_id="r#3", token_ids=[5, 6], text="hé", finished=True,
                    finish_reason="stop", logprobs=[{5: -0.5}], num_prompt_tokens=11,
                    num_output_tokens=12, error="boom")
    row = to_wire(d)
    assert from_wire(row) == d
    assert dict(zip(WIRE_FIELDS, row)) == dataclasses.asdict(d)
    assert WIRE_FIELDS == tuple(f.name for f in dataclasses.fields(StreamDelta))  # positional use


def test_coalesce_joins_per_request_in_order():
    deltas = [_delta("a", [1], "x", num_output_tokens=1),
              _delta("b", [7], "p", logprobs=[{7: -0.1}], num_output_tokens=1),
              _delta("a", [2], "y", num_output_tokens=2),
              _delta("b", [8], "", logprobs=[{8: -0.2}], num_output_tokens=2),
              _delta("a", [3], "z", finished=True, finish_reason="length", num_output_tokens=3)]
    a, b = coalesce(deltas)
    assert (a.request_id, a.token_ids, a.text, a.finished, a.finish_reason, a.num_output_tokens) \
        == ("a", [1, 2, 3], "xyz", True, "length", 3)
    assert (b.token_ids, b.text, b.logprobs, b.finished) == ([7, 8], "p", [{7: -0.1}, {8: -0.2}], False)


def test_coalesce_keeps_single_deltas():
    d = _delta("a", [1], "x")
    assert coalesce([d]) == [d] and coalesce([]) == []
