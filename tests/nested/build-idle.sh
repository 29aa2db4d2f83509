#!/usr/bin/env bash
# Builds the lab's Multiboot payloads (ELF32) into the work dir: tests/payloads/idle.S, the idle
# VM L0 keeps running while scenarios or benchmark runs start and stop L1s, and
# tests/payloads/triple-fault.S, with which the reliability check tests its triple-fault
# detection under each VMM.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${NESTED_WORKDIR:-$here/work}"
mkdir -p "$work"
for p in idle triple-fault; do
    cc -c -o "$work/$p.o" "$here/../payloads/$p.S"
    ld -m elf_x86_64 -Ttext=0x100000 -z noseparate-code -nostdlib -o "$work/${p}64.elf" "$work/$p.o"
    objcopy -I elf64-x86-64 -O elf32-i386 "$work/${p}64.elf" "$work/$p.elf"
done
