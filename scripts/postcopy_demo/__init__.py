# SPDX-License-Identifier: GPL-2.0-or-later
"""Live-migrate real guests with postcopy between QEMUs, and check them.

The machinery behind `make demo` (scripts/migrate.py), the end-to-end tests
(scripts/e2e.py) and the libvirt demo.  QMP goes through QEMU's own client
library, qemu.qmp (installed in a venv by scripts/demo-deps.sh).

  options     Options, guest RAM layouts (RAM specs), MigrateError
  procs       child processes and cleanup on every exit path
  qmp         the QMP session with one QEMU (qemu.qmp)
  console     the guest's serial console
  guests      what a VM runs: the Linux workload guest or QEMU's boot
              block, and the accelerator for it
  vm          one QEMU: the one place that starts QEMU
  hugepages   hugepage reservations, given back
  netns       two network namespaces with a delay (tc netem, or a proxy)
  session     a run's resources: VMs, hugepages, namespaces, logs
  migration   one postcopy migration over QMP and its figures
  report      progress line and summary
  benchstats  make bench-e2e's statistics: ABAB pairs, ratios, median,
              bootstrap interval
  benchreport make bench-e2e's report and its docs/BENCHMARKS.md section
  scenarios/  what a run does with a session: demo (the main command),
              pagesizes (the end-to-end tests), blocktime, libvirt,
              bench (make bench-e2e)
  cli         scripts/migrate.py's command line

Nothing is imported here, so that `python3 -m postcopy_demo.netns` (the
delay proxy) starts without the QMP library.
"""
