// SPDX-License-Identifier: BSL-1.0
// The block file seam: the only way the driver touches storage.
//
// Backends: io_uring (a ring of our own per io_context, through liburing), a
// thread pool running pread/pwrite (chosen when no io_uring ring can be
// created), an NBD export (libnbd, for nbd:// names), an RBD image (librbd,
// for rbd: names), a file on an SSH server (libssh's SFTP, for ssh:// names),
// and an in-memory file. Test decorators (fault injection,
// simulated power loss) sit behind the same interface.
#pragma once

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/system/error_code.hpp>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace qed {

/// Completion of a transfer: error, and bytes transferred (all of them on success).
using io_handler = boost::asio::any_completion_handler<void(boost::system::error_code, std::size_t)>;
/// Completion of an operation without a byte count.
using op_handler = boost::asio::any_completion_handler<void(boost::system::error_code)>;

/// One run of a block file's block status (block_file::async_block_status).
struct file_extent {
    std::uint64_t length = 0;  ///< bytes
    bool data = true;          ///< stored data (false: a hole, or nothing allocated there)
    bool zero = false;         ///< reads as zeros
};
/// Completion of block_file::async_block_status: runs in order from the offset asked.
using file_status_handler =
    boost::asio::any_completion_handler<void(boost::system::error_code, std::vector<file_extent>)>;

/// Identity of the storage behind a file, for backing-chain loop detection.
struct file_identity {
    std::uint64_t device = 0;  ///< st_dev
    std::uint64_t inode = 0;   ///< st_ino
    /// Same device and inode: the same file.
    friend bool operator==(const file_identity&, const file_identity&) = default;
};

/// Points in a format driver's work that it announces to the file below it
/// (QEMU's BlkdebugEvent, same names: blkdbg_event_name). Only a blkdebug
/// file (qed/blkdebug.hpp) acts on them. This driver announces read_aio and
/// write_aio (guest data), read_backing_aio, cow_read, l2_load; a blkdebug
/// file itself raises flush_to_os and flush_to_disk before each flush and
/// none when it opens. The others are QEMU's qcow2 and block-layer points,
/// accepted in rules files and never raised here.
enum class blkdbg_event {
    l1_update,
    l1_grow_alloc_table,
    l1_grow_write_table,
    l1_grow_activate_table,
    l2_load,
    l2_update,
    l2_update_compressed,
    l2_alloc_cow_read,
    l2_alloc_write,
    read_aio,
    read_backing_aio,
    read_compressed,
    write_aio,
    write_compressed,
    vmstate_load,
    vmstate_save,
    cow_read,
    cow_write,
    reftable_load,
    reftable_grow,
    reftable_update,
    refblock_load,
    refblock_update,
    refblock_update_part,
    refblock_alloc,
    refblock_alloc_hookup,
    refblock_alloc_write,
    refblock_alloc_write_blocks,
    refblock_alloc_write_table,
    refblock_alloc_switch_table,
    cluster_alloc,
    cluster_alloc_bytes,
    cluster_free,
    flush_to_os,
    flush_to_disk,
    pwritev_rmw_head,
    pwritev_rmw_after_head,
    pwritev_rmw_tail,
    pwritev_rmw_after_tail,
    pwritev,
    pwritev_zero,
    pwritev_done,
    empty_image_prepare,
    l1_shrink_write_table,
    l1_shrink_free_l2_clusters,
    cor_write,
    cluster_alloc_space,
    none,
};

/// Which implementation backs a file opened from a path.
enum class file_backend {
    automatic,  ///< io_uring when the io_context can have a ring, else threads
    io_uring,   ///< the io_context's own io_uring ring (liburing)
    threads,    ///< pread/pwrite on a thread pool
};

/// Image locking (QEMU's `locking=` option of file nodes).
enum class lock_mode {
    automatic,  ///< on, unless the file system has no OFD locks (one log line says so)
    on,         ///< on; an open fails where locks can't be taken
    off,        ///< take no locks and test none
};

/// Options for opening a file from a path.
struct file_options {
    bool read_only = true;                           ///< open O_RDONLY
    bool create = false;                             ///< create (truncate) the file
    bool direct = false;                             ///< O_DIRECT: bypass the host page cache
    file_backend backend = file_backend::automatic;  ///< which implementation to use
    /// QEMU-compatible OFD locks on bytes 100-104 / 200-204 (see open_file).
    lock_mode locking = lock_mode::automatic;
    /// Read-only open that lets others hold every permission (qemu -U).
    bool force_share = false;
    /// Accept a character device (QEMU's host_device protocol, asked for by
    /// name). FIFOs, sockets and directories are refused whatever this says.
    bool character_device = false;
    /// NBD files (QEMU's reconnect-delay): when the connection is lost,
    /// requests wait up to this many seconds while the file connects again,
    /// and are sent again on the new connection; after that they fail with
    /// EIO (so do new ones, each also starting an attempt, until a
    /// connection is back). 0: no reconnection, requests fail at once.
    unsigned reconnect_delay = 0;
    /// NBD files (QEMU's open-timeout): a failing open tries to connect
    /// again until this many seconds have passed. 0: one try.
    unsigned open_timeout = 0;
    /// One-line diagnostics naming the file (a refused lock, locking=auto
    /// falling back; remote files: why a connection failed, why a write past
    /// the end of an export was refused; `automatic` falling back to the
    /// thread pool, and why).
    std::function<void(std::string_view)> log;
    /// One-line reports of events that are not failures: an NBD connection
    /// lost while reconnect_delay lets requests wait, and one re-established.
    /// Empty: they go to `log`.
    std::function<void(std::string_view)> notice;
};

/// Asynchronous random-access file.
///
/// Contract (every implementation):
///  - Completion handlers run on get_executor() (or the handler's associated
///    executor), never inside the initiating call.
///  - Transfers are complete: a short read or write is continued, and only
///    full success reports `bytes == total`. Reads past end of file give zeros.
///  - The span of buffer descriptors is copied; the memory it points to must
///    stay valid until the handler runs.
///  - Several operations may be in flight at once; there is no ordering
///    between them. async_flush makes durable every write that completed
///    before it was started.
///  - Not thread-safe: call from the executor's thread (or strand).
class block_file {
public:
    /// The executor handlers run on.
    using executor_type = boost::asio::any_io_executor;

    virtual ~block_file() = default;

    /// The executor the file's handlers run on.
    virtual executor_type get_executor() const = 0;

    /// Read into `buffers` from `offset`; the handler gets the bytes read (all of
    /// them on success; zeros past end of file).
    virtual void async_read_at(std::uint64_t offset, std::span<const boost::asio::mutable_buffer> buffers,
                               io_handler handler) = 0;
    /// Write `buffers` at `offset`, growing the file if needed; the handler
    /// gets the bytes written (all of them on success).
    virtual void async_write_at(std::uint64_t offset, std::span<const boost::asio::const_buffer> buffers,
                                io_handler handler) = 0;
    /// fdatasync: every write completed before this call reaches stable storage.
    virtual void async_flush(op_handler handler) = 0;
    /// Set the file size (grow with zeros or truncate).
    virtual void async_resize(std::uint64_t size, op_handler handler) = 0;
    /// A write that is durable when the handler runs (force unit access).
    /// Default: async_write_at, then async_flush. The file must outlive the
    /// operation (as for every operation: the caller holds it).
    virtual void async_write_fua_at(std::uint64_t offset, std::span<const boost::asio::const_buffer> buffers,
                                    io_handler handler);
    /// Deallocate [offset, offset + length) without changing the size: it
    /// reads as zeros afterwards. Files that can't complete with
    /// errc::not_supported, and the caller writes zeros instead.
    virtual void async_punch_hole(std::uint64_t offset, std::uint64_t length, op_handler handler);

    /// Let go of what the file holds open below it (an image a nested
    /// format reads through: closed as an image is, flushed and marked
    /// clean). Called once by the image on it at close, after its last
    /// operation; nothing may be started on the file afterwards. Default:
    /// nothing to do (descriptors go with the object).
    virtual void async_close(op_handler handler);

    /// Current size of the file in bytes.
    virtual std::uint64_t size(std::error_code& ec) const = 0;
    /// Offset, length and memory alignment that transfers must keep to be
    /// efficient (1 for buffered files; the logical block size with O_DIRECT).
    /// Misaligned transfers still work, through a slower path.
    virtual std::size_t alignment() const noexcept { return 1; }
    /// Whether [offset, offset + length) starts with data or a hole, and how
    /// long that run is (for raw images' block status). Default: all data.
    virtual std::error_code allocation(std::uint64_t /*offset*/, std::uint64_t length, bool& data,
                                       std::uint64_t& run) const {
        data = true;
        run = length;
        return {};
    }
    /// Block status of [offset, offset + length): runs in order from
    /// `offset`, covering at least one byte and at most the range (the
    /// caller asks again from where they end). A file over something that
    /// knows more passes the question down (a blkdebug file, with its
    /// block-status rules; an image read as a file asks the image). An error
    /// fails the query (the caller decides what it means). Default:
    /// allocation(), answered on the executor; a hole reads as zeros, and a
    /// failing allocation() counts as data.
    virtual void async_block_status(std::uint64_t offset, std::uint64_t length, file_status_handler handler);
    /// True when size() is the fixed capacity of the storage (an NBD
    /// export) rather than the end of what was written: async_resize cannot
    /// grow it (ENOSPC) and shrinking keeps the bytes, which may hold
    /// anything. The image layer then finds the end of its data from its
    /// own tables.
    virtual bool fixed_size() const noexcept { return false; }
    /// Device and inode of the file (memory files: a unique id).
    virtual file_identity identity() const noexcept = 0;
    /// Whether the file was opened read-only (writes then fail with EBADF).
    virtual bool read_only() const noexcept = 0;
    /// A short name for messages ("io_uring", "threads", "memory", ...).
    virtual const char* backend_name() const noexcept = 0;
    /// The format above announces what it is about to do (before the
    /// transfer it starts). Default: nothing; a blkdebug file runs its rules.
    virtual void debug_event(blkdbg_event /*event*/) noexcept {}
};

/// Open a file by path, or a remote file by URI (nbd://HOST[:PORT]/EXPORT,
/// nbd+unix:///EXPORT?socket=PATH, rbd:POOL/IMAGE[:conf=PATH]...,
/// ssh://[USER@]HOST[:PORT]/PATH[?host_key_check=yes|no|md5:H|sha1:H|sha256:H]:
/// see is_remote_name), QEMU's fault injection layer (blkdebug:RULES:INNER,
/// blkdebug::INNER: qed/blkdebug.hpp) or QEMU's null device (null-co://: 1 GiB
/// that reads as zeros and discards writes). Throws nothing; errors come
/// back in `ec`, with a line naming the problem in options.log.
///
/// Unless locking is off, the file is locked as QEMU locks an image's file
/// (held until the file is closed): read-write opens hold consistent-read,
/// write and resize and share neither write nor resize; read-only opens
/// hold consistent-read and share neither; force-share holds
/// consistent-read and shares everything; create holds write and resize.
/// A conflict with another process (QEMU's tools included) fails with
/// errc::image_locked after logging one line in QEMU's words
/// (`FILE: Failed to get "write" lock: Is another process using the image [FILE]?`).
/// Remote files take no locks. Remote files connect synchronously, as
/// open(2) would block (image::async_open connects ssh:// files on a pool
/// thread instead, so its io_context is never held up by libssh).
std::shared_ptr<block_file> open_file(const boost::asio::any_io_executor& ex, const std::string& path,
                                      const file_options& options, std::error_code& ec);

/// True when open_file() hands `name` to a network protocol (an NBD URI, an RBD name or an ssh: name)
/// instead of the local file system. Such names are absolute: a backing
/// file name of that kind is used as it is.
bool is_remote_name(std::string_view name) noexcept;

/// True when this process can create an io_uring ring (probed once).
bool io_uring_available() noexcept;

/// Bytes of an in-memory file, shareable between several open handles
/// (so a test can "reopen" an image). Sparse: untouched ranges use no memory.
class memory_storage {
public:
    memory_storage();
    ~memory_storage();
    memory_storage(const memory_storage&) = delete;
    memory_storage& operator=(const memory_storage&) = delete;

    /// Size in bytes.
    std::uint64_t size() const noexcept;
    /// Grow with zeros or truncate to `size` bytes.
    void resize(std::uint64_t size);
    /// Copy bytes from `offset` into `out` (zeros past the end).
    void read(std::uint64_t offset, std::span<std::byte> out) const;
    /// Copy `in` to `offset`, growing the storage if needed.
    void write(std::uint64_t offset, std::span<const std::byte> in);
    /// Zero [offset, offset + length) within the current size, dropping whole pages.
    void punch(std::uint64_t offset, std::uint64_t length);
    /// Deep copy (for snapshots in tests).
    std::shared_ptr<memory_storage> clone() const;
    /// Data/hole status of the page holding `offset` and the run after it.
    void allocation(std::uint64_t offset, std::uint64_t length, bool& data, std::uint64_t& run) const;
    /// Bytes of memory actually held.
    std::uint64_t memory_used() const noexcept;
    /// A number unique to this storage (its file_identity inode).
    std::uint64_t id() const noexcept { return id_; }

private:
    struct impl;
    std::unique_ptr<impl> impl_;
    std::uint64_t id_;
};

/// QEMU's null-co driver: `size` bytes that read as zeros; writes succeed
/// and are dropped, flushes do nothing, resize changes the size. Nothing is
/// stored, so it measures the layers above it alone.
std::shared_ptr<block_file> make_null_file(const boost::asio::any_io_executor& ex, std::uint64_t size,
                                           bool read_only = false);

/// True for QEMU's null-co:// (and null-aio://) names.
bool is_null_name(std::string_view name) noexcept;

/// An in-memory block file over `storage`.
std::shared_ptr<block_file> make_memory_file(const boost::asio::any_io_executor& ex,
                                             std::shared_ptr<memory_storage> storage, bool read_only = false);

}  // namespace qed
