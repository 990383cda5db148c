; Affinity-hook policy for `kvmtalk demo upcall` (docs/bpf-runtime.md, hook 1 "affinity").
; ctx: u32 vcpu, u32 requested_cpu, u32 host_cpus (0 = unknown), u32 flags.
; Spreads requests over the host's CPUs (requested % host_cpus), refuses CPUs >= 1024,
; counts how often each host CPU was chosen in `pins`, and keeps the last decision in `last`
; as {u32 vcpu, u32 requested, u32 chosen, u32 decisions}. r0 = the chosen CPU, or -1 to refuse.
.map pins array 4 8 64
.map last array 4 16 1
  r6 = *(u32 *)(r1 + 0)
  r7 = *(u32 *)(r1 + 4)
  r8 = *(u32 *)(r1 + 8)
  r0 = -1
  if r7 > 1023 goto out
  r9 = r7
  if r8 == 0 goto chosen
  r9 %= r8
chosen:
  *(u32 *)(r10 - 4) = r9
  r1 = map(pins) ll
  r2 = r10
  r2 += -4
  call 1                      ; map_lookup_elem(pins, &chosen)
  if r0 == 0 goto record
  r1 = 1
  lock *(u64 *)(r0 + 0) += r1
record:
  r1 = 0
  *(u32 *)(r10 - 8) = r1
  r1 = map(last) ll
  r2 = r10
  r2 += -8
  call 1                      ; map_lookup_elem(last, &zero)
  if r0 == 0 goto done
  *(u32 *)(r0 + 0) = r6
  *(u32 *)(r0 + 4) = r7
  *(u32 *)(r0 + 8) = r9
  r1 = *(u32 *)(r0 + 12)
  r1 += 1
  *(u32 *)(r0 + 12) = r1
done:
  r0 = r9
out:
  exit
