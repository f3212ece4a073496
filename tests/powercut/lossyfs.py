#!/usr/bin/env python3
"""lossyfs: a FUSE file system that loses, at a simulated power cut, every change that no fsync
covered.

    lossyfs.py BACKING MOUNTPOINT [--mode strict|journal|writeback]

At mount the whole tree under BACKING is read into memory; from then on the mount works on that
memory, as a page cache would, and keeps beside it the *durable* state:

  * file data (pwrite at any offset, truncate, extend) becomes durable only when the file is
    fsynced or fdatasynced (sync_file_range never reaches FUSE, so it makes nothing durable);
  * directory entries (create, mkdir, unlink, rmdir, rename) become durable only when that
    directory is fsynced (--mode strict, the default: what POSIX promises).

--mode journal: any fsync, fdatasync or directory fsync commits every pending directory entry
of the whole tree, as a metadata journal commit of ext4 or XFS does; file data still needs the
file's own fsync (a new file whose data was never fsynced comes back empty, like ext4's delayed
allocation). --mode writeback: as journal, and the commit also makes every file's current size
durable, so data past the last fsync comes back as zeros (ext4 data=writeback, XFS).
--mode durable: a cut loses nothing (as if every write were synced at once): a check of the
harness itself, which must then pass whatever the code under test does.

Writing `cut` to MOUNTPOINT/.lossyfs-control is the power cut: every change not yet durable is
dropped and the mount shows exactly the durable state; from then on the power is off: every
change fails with EIO (a request of a killed process that the kernel still delivers after the
cut must not count), reads still work. Writing `sync` makes everything durable (as sync(2)
would). On unmount (fusermount3 -u, umount, or SIGTERM to this process) the mount's
state is written to BACKING, replacing what was there: after `cut` and unmount, BACKING holds
exactly what was durable. Wait for this process to exit before reading BACKING.

Faults, also written to MOUNTPOINT/.lossyfs-control (one command per write; faults combine
until cleared; a line goes to stderr at each):

  fault enospc          the disk is full: every write, create of a new name, mkdir and
                        truncate that extends a file fails with ENOSPC and changes nothing;
                        reads, unlink, rmdir, rename, shrinking truncates and fsync still work
                        (statfs reports no free blocks).
  fault eio-fsync       the disk fails writes back: every fsync, fdatasync and directory fsync
                        fails with EIO and makes nothing durable. As Linux does after a failed
                        writeback, the file's changes not yet durable are then taken as written:
                        readers still see them, but no later fsync makes them durable, so the
                        next cut loses them (holes of zeros or old bytes in the middle of a
                        file whose later data a successful fsync did make durable). Pending
                        directory entries stay pending (a later directory fsync commits them).
  fault eio-fsync-keep  as eio-fsync, but the changes stay pending: a later successful fsync
                        makes them durable (a kernel that retries writeback).
  fault clear           ends every fault.

fallocate is not offered (fusepy 3.0.1 has no such operation): it fails with EOPNOTSUPP,
fault or not.

What it does not model: torn or reordered writes inside one fsync (an fsync makes the file's
whole state durable at once), the loss of a sector being written, partial directory commits,
metadata other than size and entries (modes and times are always "durable"), symlinks and hard
links (refused with EPERM), xattrs, and mmap writes (the kernel sends them as ordinary writes).

A report line (JSON) goes to stderr at each cut and at exit: fsync counts and what was dropped.
"""

import argparse
import errno
import json
import os
import shutil
import stat
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations

CONTROL = "/.lossyfs-control"
CONTROL_FH = 1  # file handles of real files start above it


class File:
    __slots__ = ("data", "durable", "durable_len", "dirty", "mode", "atime", "mtime", "ctime")

    def __init__(self, mode, data=b""):
        self.data = bytearray(data)  # what readers see (the page cache)
        self.durable = bytearray(data)  # what is on the platter
        self.durable_len = len(data)  # the durable size (differs from len(durable) in writeback)
        self.dirty = []  # [start, end) ranges where data may differ from durable
        self.mode = stat.S_IFREG | (mode & 0o7777)
        now = time.time()
        self.atime = self.mtime = self.ctime = now

    def mark(self, start, end):
        if start >= end:
            return
        if self.dirty:
            last = self.dirty[-1]
            if last[0] <= start <= last[1]:
                last[1] = max(last[1], end)
                return
        self.dirty.append([start, end])

    def unsynced_bytes(self):
        return sum(b - a for a, b in self.dirty)

    def commit(self):
        """fsync: the whole current content becomes durable."""
        n = len(self.data)
        d = self.durable
        if len(d) > n:
            del d[n:]
        elif len(d) < n:
            d.extend(bytes(n - len(d)))
        for a, b in self.dirty:
            b = min(b, n)
            if a < b:
                d[a:b] = self.data[a:b]
        self.dirty = []
        self.durable_len = n

    def drop(self):
        """Power cut: back to the durable content."""
        self.data = bytearray(self.durable[:self.durable_len])
        if self.durable_len > len(self.data):
            self.data.extend(bytes(self.durable_len - len(self.data)))
        self.dirty = []


class Dir:
    __slots__ = ("entries", "durable", "mode", "atime", "mtime", "ctime")

    def __init__(self, mode):
        self.entries = {}
        self.durable = {}
        self.mode = stat.S_IFDIR | (mode & 0o7777)
        now = time.time()
        self.atime = self.mtime = self.ctime = now

    def commit(self):
        self.durable = dict(self.entries)

    def pending(self):
        """Directory entries that differ from the durable ones."""
        names = set(self.entries) | set(self.durable)
        return sum(1 for n in names if self.entries.get(n) is not self.durable.get(n))


def walk(root, attr):
    """Every node reachable from root through `attr` ("entries" or "durable")."""
    out, stack, seen = [], [root], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        if isinstance(node, Dir):
            stack.extend(getattr(node, attr).values())
    return out


class LossyFS(Operations):
    use_ns = True

    def __init__(self, backing, mode):
        self.backing = backing
        self.mode = mode
        self.mutex = threading.RLock()
        self.root = self._load(backing)
        self.handles = {}
        self.off = False  # after a cut
        self.next_fh = CONTROL_FH + 1
        self.faults = set()  # active faults: "enospc", "eio-fsync", "eio-fsync-keep"
        self.stats = {"fsync": 0, "fdatasync": 0, "fsyncdir": 0, "writes": 0, "bytes_written": 0, "cuts": 0,
                      "enospc_errors": 0, "eio_errors": 0}

    # ---- loading and saving the backing directory

    def _load(self, path):
        node = Dir(os.stat(path).st_mode)
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                child = self._load(full)
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    child = File(st.st_mode, f.read())
            else:
                continue
            node.entries[name] = child
        node.commit()
        return node

    def save(self):
        """Replaces the backing directory's content with the mount's state."""
        for name in os.listdir(self.backing):
            full = os.path.join(self.backing, name)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
        self._save(self.root, self.backing)

    def _save(self, node, path):
        for name, child in node.entries.items():
            full = os.path.join(path, name)
            if isinstance(child, Dir):
                os.mkdir(full, stat.S_IMODE(child.mode))
                self._save(child, full)
            else:
                with open(full, "wb") as f:
                    f.write(child.data)
                os.chmod(full, stat.S_IMODE(child.mode))

    # ---- power cut, sync, report

    def report(self, event):
        files = [n for n in walk(self.root, "entries") if isinstance(n, File)]
        dirs = [n for n in walk(self.root, "entries") if isinstance(n, Dir)]
        line = dict(self.stats)
        line.update(
            event=event,
            mode=self.mode,
            files=len(files),
            unsynced_files=sum(1 for f in files if f.dirty),
            unsynced_bytes=sum(f.unsynced_bytes() for f in files),
            unsynced_entries=sum(d.pending() for d in dirs),
            faults=sorted(self.faults),
        )
        print("lossyfs: " + json.dumps(line, sort_keys=True), file=sys.stderr, flush=True)

    def cut(self):
        self.stats["cuts"] += 1
        self.report("cut")
        if self.mode == "durable":
            self.sync_all()
        for node in walk(self.root, "durable"):
            if isinstance(node, Dir):
                node.entries = dict(node.durable)
            else:
                node.drop()
        self.handles.clear()
        self.off = True

    def _mutating(self):
        if self.off:
            raise FuseOSError(errno.EIO)

    # ---- faults

    FAULTS = ("enospc", "eio-fsync", "eio-fsync-keep")

    def fault(self, name):
        if name == "clear":
            self.faults.clear()
        elif name in self.FAULTS:
            self.faults.add(name)
        else:
            raise FuseOSError(errno.EINVAL)
        self.report("fault " + name)

    def _allocating(self):
        """A change that needs free space: fails while the disk is full."""
        self._mutating()
        if "enospc" in self.faults:
            self.stats["enospc_errors"] += 1
            raise FuseOSError(errno.ENOSPC)

    def _syncing(self, node):
        """An fsync of `node`: fails while the disk fails writes back."""
        self._mutating()
        if "eio-fsync" in self.faults or "eio-fsync-keep" in self.faults:
            self.stats["eio_errors"] += 1
            if isinstance(node, File) and "eio-fsync" in self.faults:
                node.dirty = []  # taken as written, never durable (Linux after a writeback error)
            raise FuseOSError(errno.EIO)

    def sync_all(self):
        for node in walk(self.root, "entries"):
            node.commit()

    def commit_metadata(self):
        """A journal commit: every directory entry, and in writeback mode every file size."""
        for node in walk(self.root, "entries"):
            if isinstance(node, Dir):
                node.commit()
            elif self.mode == "writeback":
                node.durable_len = len(node.data)

    # ---- lookup

    def _split(self, path):
        return [p for p in path.split("/") if p]

    def _node(self, path):
        node = self.root
        for part in self._split(path):
            if not isinstance(node, Dir):
                raise FuseOSError(errno.ENOTDIR)
            node = node.entries.get(part)
            if node is None:
                raise FuseOSError(errno.ENOENT)
        return node

    def _parent(self, path):
        parts = self._split(path)
        if not parts:
            raise FuseOSError(errno.EBUSY)
        parent = self._node("/" + "/".join(parts[:-1]))
        if not isinstance(parent, Dir):
            raise FuseOSError(errno.ENOTDIR)
        return parent, parts[-1]

    def _file(self, path, fh):
        if fh is not None and fh in self.handles:
            return self.handles[fh]
        node = self._node(path)
        if isinstance(node, Dir):
            raise FuseOSError(errno.EISDIR)
        return node

    def _handle(self, node):
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = node
        return fh

    # ---- attributes

    def getattr(self, path, fh=None):
        with self.mutex:
            if path == CONTROL:
                now = int(time.time() * 1e9)
                return dict(st_mode=stat.S_IFREG | 0o600, st_nlink=1, st_size=0, st_atime=now, st_mtime=now,
                            st_ctime=now, st_uid=os.getuid(), st_gid=os.getgid())
            node = self.handles.get(fh) if fh is not None else None
            if node is None:
                node = self._node(path)
            if isinstance(node, Dir):
                nlink = 2 + sum(1 for c in node.entries.values() if isinstance(c, Dir))
                size = 4096
            else:
                nlink, size = 1, len(node.data)
            return dict(st_mode=node.mode, st_nlink=nlink, st_size=size, st_blocks=(size + 511) // 512,
                        st_atime=int(node.atime * 1e9), st_mtime=int(node.mtime * 1e9),
                        st_ctime=int(node.ctime * 1e9), st_uid=os.getuid(), st_gid=os.getgid())

    def chmod(self, path, mode):
        with self.mutex:
            self._mutating()
            node = self._node(path)
            node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
            node.ctime = time.time()

    def chown(self, path, uid, gid):
        return 0

    def utimens(self, path, times=None):
        with self.mutex:
            self._mutating()
            node = self._node(path)
            if times:
                node.atime, node.mtime = times[0] / 1e9, times[1] / 1e9
            else:
                node.atime = node.mtime = time.time()

    def statfs(self, path):
        if "enospc" in self.faults:
            return dict(f_bsize=4096, f_frsize=4096, f_blocks=1 << 24, f_bfree=0, f_bavail=0,
                        f_files=1 << 20, f_ffree=1 << 19, f_favail=1 << 19, f_namemax=255)
        return dict(f_bsize=4096, f_frsize=4096, f_blocks=1 << 24, f_bfree=1 << 23, f_bavail=1 << 23,
                    f_files=1 << 20, f_ffree=1 << 19, f_favail=1 << 19, f_namemax=255)

    # ---- directories

    def readdir(self, path, fh):
        with self.mutex:
            node = self._node(path)
            if not isinstance(node, Dir):
                raise FuseOSError(errno.ENOTDIR)
            return [".", ".."] + list(node.entries)

    def mkdir(self, path, mode):
        with self.mutex:
            self._mutating()
            parent, name = self._parent(path)
            if name in parent.entries or path == CONTROL:
                raise FuseOSError(errno.EEXIST)
            self._allocating()
            parent.entries[name] = Dir(mode)
            parent.mtime = time.time()

    def rmdir(self, path):
        with self.mutex:
            self._mutating()
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if node is None:
                raise FuseOSError(errno.ENOENT)
            if not isinstance(node, Dir):
                raise FuseOSError(errno.ENOTDIR)
            if node.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]
            parent.mtime = time.time()

    def fsyncdir(self, path, datasync, fh):
        with self.mutex:
            self._mutating()
            node = self._node(path)
            if not isinstance(node, Dir):
                raise FuseOSError(errno.ENOTDIR)
            self._syncing(node)
            self.stats["fsyncdir"] += 1
            if self.mode == "strict":
                node.commit()
            else:
                self.commit_metadata()

    # ---- names

    def create(self, path, mode, fi=None):
        with self.mutex:
            if path == CONTROL:
                return CONTROL_FH
            self._mutating()
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if node is None:
                self._allocating()
                node = File(mode)
                parent.entries[name] = node
                parent.mtime = time.time()
            elif isinstance(node, Dir):
                raise FuseOSError(errno.EISDIR)
            return self._handle(node)

    def unlink(self, path):
        with self.mutex:
            self._mutating()
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if node is None:
                raise FuseOSError(errno.ENOENT)
            if isinstance(node, Dir):
                raise FuseOSError(errno.EISDIR)
            del parent.entries[name]
            parent.mtime = time.time()

    def rename(self, old, new):
        with self.mutex:
            self._mutating()
            if CONTROL in (old, new):
                raise FuseOSError(errno.EPERM)
            src_parent, src_name = self._parent(old)
            node = src_parent.entries.get(src_name)
            if node is None:
                raise FuseOSError(errno.ENOENT)
            dst_parent, dst_name = self._parent(new)
            target = dst_parent.entries.get(dst_name)
            if target is node:
                return 0
            if isinstance(node, Dir):
                if (new.rstrip("/") + "/").startswith(old.rstrip("/") + "/"):
                    raise FuseOSError(errno.EINVAL)
                if target is not None and not isinstance(target, Dir):
                    raise FuseOSError(errno.ENOTDIR)
                if isinstance(target, Dir) and target.entries:
                    raise FuseOSError(errno.ENOTEMPTY)
            elif isinstance(target, Dir):
                raise FuseOSError(errno.EISDIR)
            del src_parent.entries[src_name]
            dst_parent.entries[dst_name] = node
            src_parent.mtime = dst_parent.mtime = node.ctime = time.time()

    def link(self, target, source):
        raise FuseOSError(errno.EPERM)

    def symlink(self, target, source):
        raise FuseOSError(errno.EPERM)

    def mknod(self, path, mode, dev):
        raise FuseOSError(errno.EPERM)

    # ---- file data

    def open(self, path, flags):
        with self.mutex:
            if path == CONTROL:
                return CONTROL_FH
            return self._handle(self._file(path, None))

    def release(self, path, fh):
        with self.mutex:
            self.handles.pop(fh, None)

    def flush(self, path, fh):
        return 0

    def read(self, path, size, offset, fh):
        with self.mutex:
            if fh == CONTROL_FH:
                return b""
            node = self._file(path, fh)
            node.atime = time.time()
            return bytes(node.data[offset:offset + size])

    def write(self, path, data, offset, fh):
        with self.mutex:
            if fh == CONTROL_FH:
                command = data.decode("utf-8", "replace").strip()
                if command == "cut":
                    self.cut()
                elif command == "sync":
                    self.sync_all()
                elif command.startswith("fault "):
                    self.fault(command[len("fault "):].strip())
                else:
                    raise FuseOSError(errno.EINVAL)
                return len(data)
            self._mutating()
            node = self._file(path, fh)
            if data:
                self._allocating()
            end = offset + len(data)
            old = len(node.data)
            if offset > old:
                node.data.extend(bytes(offset - old))
            node.data[offset:end] = data
            node.mark(min(offset, old), end)
            node.mtime = time.time()
            self.stats["writes"] += 1
            self.stats["bytes_written"] += len(data)
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            if path == CONTROL or fh == CONTROL_FH:
                return 0
            self._mutating()
            node = self._file(path, fh)
            old = len(node.data)
            if length > old:
                self._allocating()
            if length < old:
                del node.data[length:]
                node.mark(length, old)
            elif length > old:
                node.data.extend(bytes(length - old))
                node.mark(old, length)
            node.mtime = time.time()

    def fsync(self, path, datasync, fh):
        with self.mutex:
            if fh == CONTROL_FH:
                return 0
            self._mutating()
            node = self._file(path, fh)
            self._syncing(node)
            self.stats["fdatasync" if datasync else "fsync"] += 1
            node.commit()
            if self.mode != "strict":
                self.commit_metadata()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--mode", choices=["strict", "journal", "writeback", "durable"], default="strict",
                        help="what an fsync makes durable besides the file's data (see above)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    backing = os.path.abspath(args.backing)
    fs = LossyFS(backing, args.mode)
    # hard_remove: an unlinked open file is not renamed to .fuse_hidden*; big_writes: 128 KiB
    # writes; timeouts 0: after a cut the kernel caches nothing stale; no_remote_lock: flock and
    # fcntl locks stay in the kernel (sled locks its db file).
    FUSE(fs, args.mountpoint, foreground=True, nothreads=False, debug=args.debug, fsname="lossyfs",
         hard_remove=True, big_writes=True, attr_timeout=0, entry_timeout=0, negative_timeout=0,
         no_remote_lock=True)
    with fs.mutex:
        fs.report("unmount")
        fs.save()


if __name__ == "__main__":
    main()
