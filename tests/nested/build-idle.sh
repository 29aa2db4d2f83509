#!/usr/bin/env bash
# Builds the idle payload (tests/payloads/idle.S, a Multiboot ELF32) into the lab's work dir:
# L0 keeps one idle minivmm VM running while scenarios or benchmark runs start and stop L1s.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$here/work"
mkdir -p "$work"
cc -c -o "$work/idle.o" "$here/../payloads/idle.S"
ld -m elf_x86_64 -Ttext=0x100000 -z noseparate-code -nostdlib -o "$work/idle64.elf" "$work/idle.o"
objcopy -I elf64-x86-64 -O elf32-i386 "$work/idle64.elf" "$work/idle.elf"
