# SPDX-License-Identifier: GPL-2.0-or-later
"""Live-migrate real guests with postcopy between QEMUs, and check them.

The machinery behind `make demo` (scripts/migrate.py), the end-to-end tests
(scripts/e2e.py) and the libvirt demo.  QMP goes through QEMU's own client
library, qemu.qmp (installed in a venv by scripts/demo-deps.sh).

  options      Options, guest RAM layouts (RAM specs), MigrateError
  procs        child processes and cleanup on every exit path
  qmp_venv     re-run an entry point under the venv that holds qemu.qmp
  qmp          the QMP session with one QEMU (qemu.qmp)
  console      the guest's serial console
  guests       what a VM runs: the Linux workload guest, QEMU's boot
               block or nothing (the firmware), and the accelerator for it
  vm           one QEMU: the one place that starts QEMU; reading its
               stderr and trace events
  hugepages    hugepage reservations, given back
  netns        two network namespaces with a delay (tc netem, or a proxy)
  libvirt      two libvirt daemons on one machine, standing for two hosts
  session      a run's resources: VMs, hugepages, namespaces, logs
  migration    one postcopy migration over QMP and its figures
  report       progress line and summary
  leakwatch    a QEMU's fds, threads and memory from /proc, and when
               they grew (make chain)
  benchstats   statistics of make bench-e2e: ABAB pairs, ratios, median,
               bootstrap interval
  bench_e2e_report
               make bench-e2e's report and its docs/BENCHMARKS.md block
               (make bench's, of the cargo benchmarks, is
               scripts/cargo-bench-report.py)
  scenarios/   what a run does with a session:
                 demo            the main command (make demo)
                 netcut, cutter  network cuts mid-postcopy, recovered
                 libvirt_demo    the demo under libvirt
                 e2e             the end-to-end tests' registry and runner
                                 (scripts/e2e.py test, check), and the
                                 page-size scenarios
                 straypage, urgent, preempthit, preemptrange
                                 end-to-end scenarios of their own
                 blocktime_bench postcopy-blocktime, patched vs unpatched
                                 (scripts/e2e.py blocktime)
                 pagesize_error, latency_accounting
                                 qemu-test.sh's checks between two given
                                 builds (scripts/e2e.py check): the error
                                 of a page-size mismatch; QEMU's blocktime
                                 and latency accounting
                 bench           make bench-e2e's runs
                 chain           one guest along N hops, a new QEMU each
                                 (make chain, migrate.py --chain N)
  cli          scripts/migrate.py's command line

Nothing is imported here, so that `python3 -m postcopy_demo.netns` (the
delay proxy) starts without the QMP library.
"""
