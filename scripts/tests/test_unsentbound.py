# SPDX-License-Identifier: GPL-2.0-or-later
"""The e2e test of stock fix 0005 (unsent-bound-4K): its reading of
`ss -tiH`."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from postcopy_demo.scenarios.unsentbound import unsent_bytes  # noqa: E402

# Two sockets as iproute2 6.1 prints them with -tiH: the info line follows
# each socket's line; notsent appears only when it is not 0.
SS = """\
0      0      10.99.0.1:48702 10.99.0.2:4444
\t cubic wscale:7,7 rto:204 rtt:3.1/0.5 mss:1448 cwnd:120 bytes_sent:91234567 \
notsent:3145728 minrtt:0.05
0      0      10.99.0.1:48710 10.99.0.2:4444
\t cubic wscale:7,7 rto:204 rtt:1.2/0.3 mss:1448 cwnd:10 bytes_sent:4096 minrtt:0.05
"""


class UnsentBytes(unittest.TestCase):
    def test_largest_socket(self):
        self.assertEqual(unsent_bytes(SS), 3145728)

    def test_field_absent_is_zero(self):
        self.assertEqual(unsent_bytes(SS.split("\n", 2)[2]), 0)

    def test_no_connection_is_none(self):
        self.assertIsNone(unsent_bytes(""))
        self.assertIsNone(unsent_bytes("\n"))

    def test_not_fooled_by_other_fields(self):
        self.assertEqual(unsent_bytes("bytes_notsent_x:5 xnotsent:7"), 0)


if __name__ == "__main__":
    unittest.main()
