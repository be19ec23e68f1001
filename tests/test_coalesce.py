"""coalesce: deltas that piled up become one per request, with the same concatenated text."""
from __future__ import annotations

from pagedllm.outputs import StreamDelta, coalesce


def test_coalesce_joins_per_request_in_order():
    deltas = [StreamDelta("a", [1], "x", num_output_tokens=1),
              StreamDelta("b", [7], "p", logprobs=[{7: -0.1}], num_output_tokens=1),
              StreamDelta("a", [2], "y", num_output_tokens=2),
              StreamDelta("b", [8], "", logprobs=[{8: -0.2}], num_output_tokens=2),
              StreamDelta("a", [3], "z", finished=True, finish_reason="length", num_output_tokens=3)]
    a, b = coalesce(deltas)
    assert (a.request_id, a.token_ids, a.text, a.finished, a.finish_reason, a.num_output_tokens) \
        == ("a", [1, 2, 3], "xyz", True, "length", 3)
    assert (b.token_ids, b.text, b.logprobs, b.finished) == ([7, 8], "p", [{7: -0.1}, {8: -0.2}], False)


def test_coalesce_keeps_single_deltas():
    d = StreamDelta("a", [1], "x")
    assert coalesce([d]) == [d] and coalesce([]) == []
