/**
 * The 4,096-instruction programs both verifiers are timed on (the "under 100 ms" figure):
 * a straight line of stack stores, context loads and adds, and a branchy one whose every branch
 * pair the verifier must explore. Assembly text, one instruction per line; context ≥ 16 bytes.
 */
export function verifierStressPrograms(): { straight: string; branchy: string } {
  const straight: string[] = ['r6 = r1', 'r0 = 0', 'r2 = 0'];
  while (straight.length < 4094) {
    const k = straight.length;
    straight.push(k % 3 === 0 ? `*(u64 *)(r10 - ${8 * ((k % 64) + 1)}) = r0` : k % 3 === 1 ? `r2 = *(u32 *)(r6 + ${(k % 4) * 4})` : 'r0 += r2');
  }
  straight.push('r0 = 0', 'exit');
  const branchy: string[] = ['r6 = r1', 'r0 = 0', '*(u64 *)(r10 - 8) = 0'];
  while (branchy.length < 4090) {
    const k = branchy.length;
    branchy.push(`r2 = *(u32 *)(r6 + ${(k % 4) * 4})`, `if r2 > ${k % 100} goto +2`, 'r3 = *(u64 *)(r10 - 8)', 'r0 += r3', 'r2 = 0');
  }
  while (branchy.length < 4094) branchy.push('r0 += 1');
  branchy.push('r0 = 0', 'exit');
  return { straight: straight.join('\n'), branchy: branchy.join('\n') };
}
