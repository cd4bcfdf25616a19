"""CoAP (RFC 7252) with block-wise transfer (RFC 7959) for CMP over CoAP (RFC 9482).

``message``, ``timing``, ``client`` and ``server`` are sans-I/O (no sockets, no clock);
``transport`` runs the client side on one trio UDP socket behind ``fleet.transport``'s seam.
"""
