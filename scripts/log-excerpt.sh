#!/usr/bin/env bash
# Prints the part of a service's log (`$1`) that says why it stopped: its last 40 lines up to
# the first backtrace, so that a panic's or an error's message is shown rather than only the
# backtrace's last frames (RUST_BACKTRACE is often set).
sed -n '1,/[Ss]tack backtrace:/p' "$1" | tail -n 40
