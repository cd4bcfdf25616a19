"""The habits of real CAs that fleet's client accepts, counts and reports as warnings instead of
refusing (docs/strictness.md has the survey: each strict check is a safety rule or a habit)."""

from __future__ import annotations

__all__ = ["WARNINGS"]

WARNINGS: dict[str, str] = {
    "capubs_ignored": "caPubs of a signature-protected response ignored, not trusted"
                      " (RFC 9483 §4.1.1: caPubs are trust anchors only under MAC protection)",
    "message_time_skew": "the response's messageTime is far from this machine's clock"
                         " (informational, RFC 9483 §3.1; check the clocks)",
    "unknown_general_info": "the response's generalInfo holds an item fleet does not know (ignored)",
    "http_status": "the CMP response came with an HTTP status other than 200",
}
