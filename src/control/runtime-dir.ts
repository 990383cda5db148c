/**
 * The runtime directory where running VMs announce their control sockets (docs/channels.md,
 * "Attaching from another host process"): `<name>.sock` (mode 0600) and `<name>.json` (pid, name,
 * socket path, process start time) for every VM that serves one.
 *
 * The directory is the only access control on the sockets (a Unix socket's own mode is not
 * checked by every kernel path, and a VM's memfd is reachable by whoever can talk to it), so it
 * must be private: mode 0700, owned by the caller, a real directory (not a symlink). A directory
 * with looser permissions that we own is tightened; one owned by someone else is refused — in
 * `/tmp` another user could have created `/tmp/kvmtalk-<uid>` first to watch or spoof our VMs.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, linkSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Environment variable that overrides the runtime directory (tests, unusual setups). */
export const RUNTIME_DIR_ENV = 'KVMTALK_RUNTIME_DIR';

/** A VM name: safe as a file name, short enough for a socket path. */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;

/** The runtime directory is unusable: wrong owner, a symlink, not a directory, cannot be created. */
export class RuntimeDirError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RuntimeDirError';
  }
}

/** What a VM announces in `<name>.json`. */
export interface VmEntry {
  /** The VM's name, unique in the directory. */
  name: string;
  /** The VMM's process id. */
  pid: number;
  /** Absolute path of the control socket. */
  socket: string;
  /**
   * Start time of the process in clock ticks since boot (field 22 of /proc/<pid>/stat): tells a
   * live VMM from an unrelated process that reused its pid after a crash.
   */
  startTime?: number;
  /** Wall-clock creation time of the entry (ms since the epoch). */
  created?: number;
}

function uid(): number {
  return process.getuid?.() ?? 0;
}

/**
 * The runtime directory path (not created): `$KVMTALK_RUNTIME_DIR`, else
 * `$XDG_RUNTIME_DIR/kvmtalk`, else `/run/kvmtalk` for root, else `/tmp/kvmtalk-<uid>`.
 */
export function runtimeDirPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env[RUNTIME_DIR_ENV]) return env[RUNTIME_DIR_ENV]!;
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'kvmtalk');
  return uid() === 0 ? '/run/kvmtalk' : `/tmp/kvmtalk-${uid()}`;
}

/**
 * Checks that `dir` is a directory owned by the caller with mode 0700, tightening the mode of a
 * directory we own. Throws {@link RuntimeDirError} for anything else. `lstat`, so a symlink
 * planted in its place is refused rather than followed.
 *
 * `readOnly`: root may *read* a directory another user owns (to attach to that user's VM with
 * `--dir`); its mode is then that user's business and left alone. Serving never allows it.
 */
export function checkRuntimeDir(dir: string, { readOnly = false } = {}): void {
  const st = lstatSync(dir);
  if (st.isSymbolicLink()) throw new RuntimeDirError(`runtime directory ${dir} is a symbolic link; refusing to use it (remove it or set ${RUNTIME_DIR_ENV})`);
  if (!st.isDirectory()) throw new RuntimeDirError(`runtime directory ${dir} is not a directory`);
  if (st.uid !== uid()) {
    if (readOnly && uid() === 0) return;
    throw new RuntimeDirError(`runtime directory ${dir} is owned by uid ${st.uid}, not by you (uid ${uid()}); refusing to use it (remove it or set ${RUNTIME_DIR_ENV})`);
  }
  if ((st.mode & 0o777) !== 0o700) {
    try {
      chmodSync(dir, 0o700);
    } catch (e) {
      throw new RuntimeDirError(`runtime directory ${dir} has mode ${(st.mode & 0o777).toString(8)} and cannot be set to 700: ${(e as Error).message}`);
    }
  }
}

/**
 * Resolves the runtime directory, creating it (mode 0700) if needed, and checks it with
 * {@link checkRuntimeDir}. Returns its path.
 */
export function ensureRuntimeDir(dir = runtimeDirPath()): string {
  try {
    // recursive: the parent may be missing (e.g. a fresh /run on a container). Only the last
    // component is ours to check: parents like /run/user/<uid> belong to the system.
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new RuntimeDirError(`cannot create runtime directory ${dir}: ${(e as Error).message}`);
  }
  checkRuntimeDir(dir);
  return dir;
}

/** Throws a RangeError unless `name` is a valid VM name (letters, digits, `.`, `_`, `-`; at most 64). */
export function checkVmName(name: string): void {
  if (!NAME_RE.test(name)) throw new RangeError(`bad VM name '${name}': use 1–64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
}

/** Paths of a VM's files: control socket, entry, and the upcall endpoint's socket and TCP token (docs/upcall-device.md). */
export function vmPaths(dir: string, name: string): { socket: string; json: string; upcallSocket: string; upcallToken: string } {
  return { socket: join(dir, `${name}.sock`), json: join(dir, `${name}.json`), upcallSocket: join(dir, `${name}.upcall.sock`), upcallToken: join(dir, `${name}.upcall.token`) };
}

/** Start time of process `pid` in clock ticks since boot, or undefined if it does not exist. */
export function processStartTime(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may contain spaces or ')': fields after
    // the last ')' are plain numbers. starttime is field 22, the 20th after the name.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const t = Number(fields[19]);
    return Number.isFinite(t) ? t : undefined;
  } catch {
    return undefined;
  }
}

/** Whether the process an entry names still runs (and is the same process, when its start time is known). */
export function isAlive(entry: Pick<VmEntry, 'pid' | 'startTime'>): boolean {
  if (!Number.isSafeInteger(entry.pid) || entry.pid <= 0) return false;
  try {
    process.kill(entry.pid, 0);
  } catch (e) {
    // EPERM: it exists but belongs to someone else (a root VMM listed in a shared directory).
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  if (entry.startTime === undefined) return true;
  const now = processStartTime(entry.pid);
  return now === undefined || now === entry.startTime;
}

/** Parses a `<name>.json` entry; undefined if it is not one. */
function parseEntry(text: string, file: string): VmEntry | undefined {
  try {
    const v = JSON.parse(text) as Partial<VmEntry>;
    if (typeof v.name !== 'string' || typeof v.socket !== 'string' || !Number.isSafeInteger(v.pid)) return undefined;
    // The name in the file must match the file name: an entry cannot claim another VM's name.
    if (`${v.name}.json` !== file) return undefined;
    return { name: v.name, pid: v.pid!, socket: v.socket, startTime: typeof v.startTime === 'number' ? v.startTime : undefined, created: typeof v.created === 'number' ? v.created : undefined };
  } catch {
    return undefined;
  }
}

/** Removes a VM's files, ignoring ones already gone. */
export function removeVmFiles(dir: string, name: string): void {
  const p = vmPaths(dir, name);
  for (const f of [p.json, p.socket, p.upcallSocket, p.upcallToken]) rmSync(f, { force: true });
}

/**
 * The VMs announced in `dir`, sorted by name. Entries whose process is gone are stale (a VMM
 * that crashed or was killed): they are removed and not listed. A directory that does not exist
 * lists nothing; one that is not ours (except for root), or that we cannot read, throws
 * {@link RuntimeDirError}.
 */
export function listVms(dir = runtimeDirPath()): VmEntry[] {
  let files: string[];
  try {
    files = readdirSync(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return [];
    if (code === 'EACCES') throw new RuntimeDirError(`permission denied reading runtime directory ${dir}: its VMs belong to another user (run as that user or root)`);
    throw e;
  }
  checkRuntimeDir(dir, { readOnly: true });
  // Root looking into another user's directory leaves its files alone.
  const ours = lstatSync(dir).uid === uid();
  const out: VmEntry[] = [];
  for (const file of files) {
    if (!file.endsWith('.json')) continue;
    let text: string;
    try {
      text = readFileSync(join(dir, file), 'utf8');
    } catch {
      continue; // removed meanwhile
    }
    const entry = parseEntry(text, file);
    // Not an entry, or one whose socket is elsewhere (it would send an attacher to some other
    // VM's socket): skip it, it is not ours to delete either.
    if (!entry || entry.socket !== vmPaths(dir, entry.name).socket) continue;
    if (isAlive(entry)) out.push(entry);
    else if (ours) removeVmFiles(dir, entry.name);
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

/**
 * Finds a running VM by name, or by pid (a string of digits, or a number) when exactly one VM of
 * that process is listed. Throws an Error naming the running VMs when there is no match.
 */
export function findVm(nameOrPid: string | number, dir = runtimeDirPath()): VmEntry {
  const vms = listVms(dir);
  const key = String(nameOrPid);
  const byName = vms.find((v) => v.name === key);
  if (byName) return byName;
  if (/^\d+$/.test(key)) {
    const byPid = vms.filter((v) => v.pid === Number(key));
    if (byPid.length === 1) return byPid[0];
    if (byPid.length > 1) throw new Error(`process ${key} runs ${byPid.length} VMs (${byPid.map((v) => v.name).join(', ')}): give a name`);
  }
  const known = vms.length ? vms.map((v) => v.name).join(', ') : 'none';
  throw new Error(`unknown VM '${key}' in ${dir} (running: ${known})`);
}

/** How many VMs this process has registered, for default names `vm-<pid>`, `vm-<pid>-2`, … */
let defaultNames = 0;

/**
 * Claims a unique name in `dir` by creating `<name>.json` exclusively (two VMMs racing for one
 * name cannot both win). Without `name`, picks
 * `vm-<pid>`, then `vm-<pid>-2`, … A stale entry of a dead process is replaced; a live one makes
 * an explicit name fail with an Error. Returns the entry; the caller listens on `entry.socket`.
 */
export function claimVmName(dir: string, name?: string): VmEntry {
  if (name !== undefined) checkVmName(name);
  const nextDefault = () => (defaultNames++ === 0 ? `vm-${process.pid}` : `vm-${process.pid}-${defaultNames}`);
  let candidate = name ?? nextDefault();
  for (let attempt = 0; attempt < 1000; attempt++) {
    const paths = vmPaths(dir, candidate);
    if (paths.socket.length > MAX_SOCKET_PATH) throw new RuntimeDirError(`socket path ${paths.socket} is longer than ${MAX_SOCKET_PATH} bytes; use a shorter runtime directory or VM name`);
    const entry: VmEntry = { name: candidate, pid: process.pid, socket: paths.socket, startTime: processStartTime(process.pid), created: Date.now() };
    // Write the whole entry under a private name, then link() it into place: link fails with
    // EEXIST atomically, and a reader never sees a half-written entry (which it could not tell
    // from a stale one).
    const tmp = join(dir, `.${candidate}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
    writeFileSync(tmp, JSON.stringify(entry) + '\n', { mode: 0o600, flag: 'wx' });
    try {
      linkSync(tmp, paths.json);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const existing = readEntry(paths.json, candidate);
      if (existing && isAlive(existing)) {
        if (name !== undefined) throw new Error(`a VM named '${name}' is already running (pid ${existing.pid})`);
        candidate = nextDefault();
      } else {
        // Stale (or garbage under this name): remove it and retry.
        removeVmFiles(dir, candidate);
      }
      continue;
    } finally {
      rmSync(tmp, { force: true });
    }
    return entry;
  }
  throw new Error(`could not claim a VM name in ${dir}`);
}

function readEntry(path: string, name: string): VmEntry | undefined {
  try {
    return parseEntry(readFileSync(path, 'utf8'), `${name}.json`);
  } catch {
    return undefined;
  }
}

/** Removes the files of an entry this process claimed, if they are still ours. */
export function releaseVmName(dir: string, entry: VmEntry): void {
  const current = readEntry(vmPaths(dir, entry.name).json, entry.name);
  // Another process may have taken the name over if ours looked stale (it cannot, while we live,
  // but be exact anyway): only delete files that still name us.
  if (current && current.pid !== entry.pid) return;
  try {
    unlinkSync(entry.socket);
  } catch {
    // already gone
  }
  rmSync(vmPaths(dir, entry.name).json, { force: true });
}
