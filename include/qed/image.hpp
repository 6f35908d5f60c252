// SPDX-License-Identifier: BSL-1.0
// The image API: create, open, read, write, write-zeroes, discard, flush, block
// status, check, change backing file, grow, close.
//
// Threading: an image lives on one executor (pass a strand if the io_context
// runs on several threads). Every completion handler runs on that executor,
// or on the handler's own associated executor, and never inside the call
// that started the operation. Initiating functions take any Asio completion
// token: a callback, boost::asio::use_future, boost::asio::use_awaitable...
//
// Requests use scatter-gather buffers, must be 512-byte aligned in offset and
// length, and may be in flight in any number at once. The caller keeps the
// buffers alive until the handler runs.
#pragma once

#include <boost/asio/async_result.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "qed/block_file.hpp"
#include "qed/detail/buffers.hpp"
#include "qed/error.hpp"
#include "qed/format.hpp"

namespace qed {

class throttle_group;

enum class image_format { qed, raw };
std::string_view to_string(image_format f) noexcept;
/// "qed" or "raw"; anything else gives nullopt.
std::optional<image_format> parse_format(std::string_view name) noexcept;

/// How to open a file by path; the default opens real files with open_file().
/// Tests install one that serves in-memory files.
using file_opener =
    std::function<std::shared_ptr<block_file>(const std::string& path, const file_options&, std::error_code&)>;

/// Receives one-line diagnostics (why an open failed, what a repair did).
using log_sink = std::function<void(std::string_view)>;

/// How async_create makes an image.
struct create_options {
    image_format format = image_format::qed;  ///< qed or raw
    /// Guest size, rounded up to 512. Left out with a backing file: the
    /// backing file's size.
    std::optional<std::uint64_t> size;
    std::uint32_t cluster_size = default_cluster_size;  ///< QED: bytes per cluster, a power of two, 4 KiB to 64 MiB
    std::uint32_t table_size = default_table_size;      ///< QED: clusters per table, a power of two, 1 to 16
    std::string backing_file;                           ///< empty: none
    std::optional<image_format> backing_format;         ///< raw sets BACKING_FORMAT_NO_PROBE
    file_backend backend = file_backend::automatic;     ///< file implementation for the new file
    /// The new file is locked (write + resize) while it is written.
    lock_mode locking = lock_mode::automatic;
    file_opener opener;  ///< empty: open_file
    log_sink log;        ///< one-line diagnostics (a refused lock)
};

/// How async_open opens an image and its backing chain.
struct open_options {
    bool read_only = false;                          ///< open the image (its backing files always are) read-only
    std::optional<image_format> format;              ///< nullopt: probe the magic
    file_backend backend = file_backend::automatic;  ///< file implementation
    bool direct = false;                             ///< O_DIRECT (cache=none)
    /// Most L2 tables kept in memory (a secondary cap: l2_cache_bytes
    /// usually decides for large tables).
    std::size_t l2_cache_size = 50;
    /// Most bytes of L2 tables kept in memory, as QEMU's qcow2 l2-cache-size
    /// (whose default is 32 MiB on Linux). The cache holds
    /// max(1, min(l2_cache_size, l2_cache_bytes / table bytes)) tables: 50
    /// of the default 256 KiB tables, but a single one of 1 GiB (64 MiB
    /// clusters, table_size 16). Tables in use by requests in flight are
    /// kept beyond the cap until those requests finish.
    std::size_t l2_cache_bytes = std::size_t{32} << 20;
    /// Quiet time after the last allocating write before NEED_CHECK is cleared.
    std::chrono::milliseconds need_check_timeout{5000};
    unsigned max_backing_depth = 16;  ///< longer backing chains are refused
    /// When set, every backing file must resolve inside this directory.
    std::optional<std::string> allowed_backing_dir;
    /// With allowed_backing_dir: also accept remote backing files (nbd://,
    /// rbd:, ssh://), which no directory can contain. The image's owner vouches for
    /// the servers its backing names point at.
    bool allow_remote_backing = false;
    bool open_backing = true;    ///< false: leave the backing file closed (metadata tools)
    bool repair_on_open = true;  ///< read-write open of a dirty image checks and repairs it
    /// QEMU-compatible image locks on the image and every backing file,
    /// held until close (see open_file). A conflicting process makes the
    /// open fail with errc::image_locked and one log line naming the lock.
    lock_mode locking = lock_mode::automatic;
    /// Read-only open that lets others hold every permission, as qemu's
    /// -U / --force-share (a read-write open with it is refused).
    bool force_share = false;
    /// The image (not its backing files) may be a character device, as with
    /// QEMU's host_device protocol; by default only regular files and block
    /// devices are opened.
    bool character_device = false;
    /// Throttle groups (QEMU's throttle-group objects, qed/throttle.hpp)
    /// that throttle nodes of a json: name may join, by their names.
    std::vector<std::shared_ptr<throttle_group>> throttle_groups;
    file_opener opener;  ///< empty: open_file
    log_sink log;        ///< empty: diagnostics are dropped
    /// Reports of events that are not failures (file_options::notice: an
    /// NBD connection lost and re-established). Empty: they go to `log`.
    log_sink notice;
};

/// What an image is (all from memory, no I/O).
struct image_info {
    std::string filename;                           ///< the name the image was opened by
    image_format format = image_format::qed;        ///< qed or raw
    std::uint64_t virtual_size = 0;                 ///< guest size in bytes
    std::uint64_t file_size = 0;                    ///< bytes of the image file
    bool read_only = false;                         ///< opened read-only
    std::string backend;                            ///< file backend ("io_uring", "threads", "memory")
    std::uint32_t request_alignment = sector_size;  ///< offsets and lengths must be multiples of this
    // QED only:
    std::uint32_t cluster_size = 0;              ///< QED: bytes per cluster
    std::uint32_t table_size = 0;                ///< QED: clusters per table
    std::uint32_t header_size = 0;               ///< QED: header clusters
    std::uint64_t l1_table_offset = 0;           ///< QED: byte offset of the L1 table
    std::uint64_t features = 0;                  ///< QED: feature bits
    std::uint64_t compat_features = 0;           ///< QED: compatible feature bits
    std::uint64_t autoclear_features = 0;        ///< QED: auto-clear feature bits
    bool need_check = false;                     ///< the NEED_CHECK bit as it is on disk now
    std::string backing_file;                    ///< as stored in the header
    std::string backing_file_full;               ///< resolved against the image's directory
    std::optional<image_format> backing_format;  ///< raw when the header says NO_PROBE; nullopt: probed
    unsigned chain_depth = 0;                    ///< backing files below this image that are open
};

/// One run of the guest address space with uniform allocation status.
struct extent {
    std::uint64_t offset = 0;                  ///< guest offset
    std::uint64_t length = 0;                  ///< bytes
    unsigned depth = 0;                        ///< chain level that supplies the data (0 = this image)
    bool present = false;                      ///< allocated somewhere in the chain
    bool zero = false;                         ///< reads as zeros
    bool data = false;                         ///< backed by data in a file
    std::optional<std::uint64_t> host_offset;  ///< offset in the file at `depth`
    /// Field-by-field equality.
    friend bool operator==(const extent&, const extent&) = default;
};

/// Append `e` to `out`, extending the last extent instead when `e`
/// continues it (adjacent, same status and depth, and host offsets that
/// continue too). Empty extents are dropped. This is how block status
/// builds its answer, so results put together piecewise merge the same way.
inline void append_extent(std::vector<extent>& out, const extent& e) {
    if (e.length == 0) return;
    if (!out.empty()) {
        extent& last = out.back();
        const bool continues = last.depth == e.depth && last.present == e.present && last.zero == e.zero &&
                               last.data == e.data && last.offset + last.length == e.offset &&
                               last.host_offset.has_value() == e.host_offset.has_value() &&
                               (!e.host_offset || *last.host_offset + last.length == *e.host_offset);
        if (continues) {
            last.length += e.length;
            return;
        }
    }
    out.push_back(e);
}

/// What async_check does besides checking.
struct check_options {
    /// What to repair (as qemu-img check -r).
    enum class repair {
        none,   ///< report only
        leaks,  ///< free leaked clusters
        all,    ///< also clear invalid table entries
    };
    repair mode = repair::none;  ///< what to repair
};

/// What async_check found and did.
struct check_result {
    std::uint64_t corruptions = 0;          ///< remaining after any repair
    std::uint64_t leaks = 0;                ///< remaining after any repair
    std::uint64_t check_errors = 0;         ///< I/O errors while checking
    std::uint64_t corruptions_fixed = 0;    ///< corruptions repaired
    std::uint64_t leaks_fixed = 0;          ///< leaked clusters freed
    std::uint64_t total_clusters = 0;       ///< guest size in clusters
    std::uint64_t allocated_clusters = 0;   ///< data clusters in this image
    std::uint64_t fragmented_clusters = 0;  ///< data clusters not following their predecessor
    std::uint64_t image_end_offset = 0;     ///< end of the last used cluster
    bool need_check_cleared = false;        ///< repair cleared NEED_CHECK
    std::vector<std::string> messages;      ///< one line per problem found
};

/// Options of one write.
struct write_options {
    bool fua = false;  ///< force unit access: durable when the handler runs
};

/// Options of one write-zeroes.
struct zero_options {
    /// false (NBD's NO_HOLE): write real zeros, keep storage allocated.
    bool may_unmap = true;
    bool fua = false;  ///< force unit access: durable when the handler runs
};

namespace detail {
class device;
}

/// A handle to an open image (cheap to copy; all copies share the image).
class image {
public:
    /// The executor handlers run on (unless a handler has its own).
    using executor_type = boost::asio::any_io_executor;

    /// A handle without an image: operations fail with errc::closed (get_executor() throws it).
    image() = default;
    /// A handle on an opened device (the library's own use).
    explicit image(std::shared_ptr<detail::device> dev) noexcept : dev_(std::move(dev)) {}

    /// Whether the handle refers to an image that is not closed.
    bool is_open() const noexcept;
    /// is_open().
    explicit operator bool() const noexcept { return is_open(); }
    /// The executor the image lives on.
    executor_type get_executor() const;
    /// Guest size in bytes.
    std::uint64_t size() const;
    /// What the image is, from memory (no I/O).
    image_info info() const;
    /// The backing image, if one is open (a handle sharing this image's chain).
    image backing() const;

    // ---- creation and opening -------------------------------------------

    /// Create an image file. Signature: void(boost::system::error_code).
    template <class Token>
    static auto async_create(const executor_type& ex, std::string path, create_options options, Token&& token);

    /// Open an image file. Signature: void(boost::system::error_code, image).
    template <class Token>
    static auto async_open(const executor_type& ex, std::string path, open_options options, Token&& token);

    /// Open an image on an already open block file; `name` is used for
    /// messages and to resolve a relative backing file name.
    template <class Token>
    static auto async_open(std::shared_ptr<block_file> file, std::string name, open_options options, Token&& token);

    // ---- I/O ------------------------------------------------------------

    /// Signature: void(boost::system::error_code, std::size_t bytes).
    template <class MutableBufferSequence, class Token>
    auto async_read_at(std::uint64_t offset, const MutableBufferSequence& buffers, Token&& token);

    /// Signature: void(boost::system::error_code, std::size_t bytes).
    template <class ConstBufferSequence, class Token>
    auto async_write_at(std::uint64_t offset, const ConstBufferSequence& buffers, Token&& token);
    /// As above, with per-write options (FUA). Signature: void(std::error_code, std::size_t bytes).
    template <class ConstBufferSequence, class Token>
    auto async_write_at(std::uint64_t offset, const ConstBufferSequence& buffers, write_options options, Token&& token);

    /// Make [offset, offset + length) read as zeros. Signature: void(boost::system::error_code).
    template <class Token>
    auto async_write_zeroes(std::uint64_t offset, std::uint64_t length, zero_options options, Token&& token);
    /// As above with the default zero_options (unmapping allowed).
    template <class Token>
    auto async_write_zeroes(std::uint64_t offset, std::uint64_t length, Token&& token) {
        return async_write_zeroes(offset, length, zero_options{}, std::forward<Token>(token));
    }

    /// Discard (trim) [offset, offset + length): the caller no longer needs
    /// these bytes, and the host file system may have their space back.
    ///  - QED: every data cluster lying entirely inside the range has its
    ///    storage deallocated in place (a hole punched in the image file):
    ///    the file's allocated blocks shrink, its size and the cluster tables
    ///    do not change, and the cluster reads as zeros from then on. With a
    ///    backing file too: a discarded cluster keeps hiding the backing
    ///    file (it reads zeros, never the backing file's older data, which
    ///    the guest had overwritten). Partial clusters at either end, zero
    ///    clusters and unallocated clusters (which keep reading from the
    ///    backing file) are left as they are.
    ///  - raw: the whole range is punched and reads as zeros.
    /// Where the file cannot punch holes nothing changes. So afterwards each
    /// cluster of the range reads as its old contents or as zeros; use
    /// async_write_zeroes when zeros are required. Same checks as a write
    /// (alignment, bounds, errc::read_only). Signature: void(boost::system::error_code).
    template <class Token>
    auto async_discard(std::uint64_t offset, std::uint64_t length, Token&& token);

    /// Make every completed write durable. Signature: void(boost::system::error_code).
    template <class Token>
    auto async_flush(Token&& token);

    /// Allocation status of [offset, offset + length), as extents covering
    /// the whole range. Signature: void(boost::system::error_code, std::vector<extent>).
    template <class Token>
    auto async_block_status(std::uint64_t offset, std::uint64_t length, Token&& token);

    // ---- maintenance ----------------------------------------------------

    /// Consistency check, with optional repair. Waits for requests in
    /// flight and holds new ones back while it runs.
    /// Signature: void(boost::system::error_code, check_result).
    template <class Token>
    auto async_check(check_options options, Token&& token);

    /// Point the image at another backing file (header rewrite only).
    /// An empty name removes the backing file. The switch is atomic under
    /// power loss, so a name longer than the header's first block must fit
    /// in the header clusters without overlapping the current name (always
    /// true up to half the header area); else errc::backing_name_too_long.
    /// Signature: void(boost::system::error_code).
    template <class Token>
    auto async_change_backing_file(std::string name, std::optional<image_format> format, Token&& token);

    /// Grow the guest size (shrinking is refused). Signature: void(boost::system::error_code).
    template <class Token>
    auto async_grow(std::uint64_t new_size, Token&& token);

    /// Drop every cluster of the image so it reads from its backing file
    /// again (used by commit). Signature: void(boost::system::error_code).
    template <class Token>
    auto async_make_empty(Token&& token);

    /// Finish requests in flight, flush, mark the image clean, close the
    /// chain. Signature: void(boost::system::error_code).
    template <class Token>
    auto async_close(Token&& token);

    /// The device behind the handle (the library's own use).
    const std::shared_ptr<detail::device>& device() const noexcept { return dev_; }

private:
    std::shared_ptr<detail::device> dev_;
};

}  // namespace qed

#include "qed/impl/image.hpp"
