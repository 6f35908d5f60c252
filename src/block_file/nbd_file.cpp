// SPDX-License-Identifier: BSL-1.0
// The NBD backend. Every transfer becomes one or more libnbd commands
// (nbd_aio_pread / nbd_aio_pwrite / nbd_aio_flush / nbd_aio_zero); the
// socket libnbd owns is watched (as an Asio generic stream socket) in the
// direction nbd_aio_get_direction asks for, and nbd_aio_notify_read/write
// move libnbd's state machine on. libnbd calls a command's completion
// callback from inside those notify calls; it only records the result, and
// the request's handler is posted to the file's executor, never run there.
//
// Readability is watched with a one-byte MSG_PEEK receive, not a plain
// wait: libnbd stops reading at the end of a reply even when more replies
// are already buffered, and Asio's epoll reactor is edge-triggered, so a
// wait would not wake for bytes that had arrived before it was queued
// (bench/remote hung that way); a peek completes at once while bytes are
// there. Write waits re-check with poll() after queueing, for the edge
// another thread's reactor may have taken. The socket is watched for
// replies only while commands are in flight, and idle waits are cancelled,
// so an idle connection keeps no work on the io_context (run() returns).
//
// An export's size is fixed: size() is its capacity, async_resize can't
// grow it (ENOSPC, with a line naming the export), and writes past the end
// fail the same way without sending anything. Reads past the end give zeros.
//
// Scatter-gather: libnbd takes one buffer per command. A buffer of 64 KiB
// or more gets a command of its own (no copy); runs of smaller neighbours
// are gathered into one bounce buffer per command, so a request of many
// small pieces doesn't become many round trips.
#include "block_file/nbd_file.hpp"

#include "block_file/posix_io.hpp"
#include "qed/error.hpp"

#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/container/small_vector.hpp>

#include <libnbd.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <string_view>

namespace qed::detail {

bool is_nbd_name(std::string_view name) noexcept {
    for (std::string_view scheme : {"nbd://", "nbds://", "nbd+unix://", "nbds+unix://", "nbd+vsock://", "nbds+vsock://"})
        if (name.starts_with(scheme)) return true;
    return false;
}

namespace {

namespace asio = boost::asio;

/// NBD's default limit when the server does not advertise one (the spec's 32 MiB).
constexpr std::uint64_t default_max_request = 32ull << 20;
/// libnbd refuses larger reads and writes.
constexpr std::uint64_t libnbd_max_request = 64ull << 20;
/// Buffers at least this large travel in their own command, without a copy.
constexpr std::size_t own_command_min = 64 * 1024;
/// Write-zeroes commands carry a 32-bit length: keep well below.
constexpr std::uint64_t max_zero_request = 1ull << 30;

class nbd_file;

/// One operation of the block file interface: one or more NBD commands.
struct request {
    std::shared_ptr<nbd_file> file;
    io_handler ioh;
    op_handler oph;
    std::size_t bytes = 0;
    unsigned pending = 1;  // a guard while commands are being issued
    int error = 0;
};

/// One NBD command. Gathered pieces travel through `bounce`; for a read,
/// `scatter` says where its bytes go once it completes.
struct command {
    request* req = nullptr;
    std::unique_ptr<std::byte[]> bounce;
    boost::container::small_vector<asio::mutable_buffer, 8> scatter;
};

struct piece {
    std::byte* data;
    std::size_t len;
};

class nbd_file final : public block_file, public std::enable_shared_from_this<nbd_file> {
public:
    nbd_file(asio::any_io_executor ex, nbd_handle* h, std::string uri, bool read_only,
             std::function<void(std::string_view)> log)
        : ex_(std::move(ex)),
          h_(h),
          socket_(ex_, protocol_of(::nbd_aio_get_fd(h)), ::nbd_aio_get_fd(h)),
          uri_(std::move(uri)),
          read_only_(read_only),
          log_(std::move(log)) {
        size_ = static_cast<std::uint64_t>(::nbd_get_size(h));
        can_flush_ = ::nbd_can_flush(h) == 1;
        can_fua_ = ::nbd_can_fua(h) == 1;
        can_zero_ = ::nbd_can_zero(h) == 1;
        const std::int64_t min = ::nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
        align_ = min > 1 ? static_cast<std::size_t>(min) : 1;
        const std::int64_t max = ::nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
        max_request_ = std::min<std::uint64_t>(max > 0 ? static_cast<std::uint64_t>(max) : default_max_request,
                                               libnbd_max_request);
        max_request_ = std::max<std::uint64_t>(max_request_ / align_ * align_, align_);
        // Loop detection compares identities: the same URI is the same export.
        identity_ = {0x4e4244ull << 40, std::hash<std::string>{}(uri_)};
    }

    ~nbd_file() override {
        // No command is in flight (each holds the file). Ask the server to
        // let go (queued and sent without waiting), then close the socket.
        boost::system::error_code ignored;
        socket_.release(ignored);
        ::nbd_aio_disconnect(h_, 0);
        ::nbd_close(h_);
    }

    executor_type get_executor() const override { return ex_; }

    void async_read_at(std::uint64_t offset, std::span<const asio::mutable_buffer> buffers,
                       io_handler handler) override {
        auto* req = start();
        req->ioh.swap(handler);
        boost::container::small_vector<piece, 8> pieces;
        std::uint64_t pos = offset;
        for (const auto& b : buffers) {
            auto* p = static_cast<std::byte*>(b.data());
            // Past the end of the export: zeros.
            const std::size_t in = pos >= size_ ? 0 : static_cast<std::size_t>(std::min<std::uint64_t>(b.size(), size_ - pos));
            if (in) pieces.push_back({p, in});
            std::memset(p + in, 0, b.size() - in);
            pos += b.size();
            req->bytes += b.size();
        }
        issue(req, false, false, offset, pieces);
    }

    void async_write_at(std::uint64_t offset, std::span<const asio::const_buffer> buffers,
                        io_handler handler) override {
        write(offset, buffers, false, std::move(handler));
    }

    void async_write_fua_at(std::uint64_t offset, std::span<const asio::const_buffer> buffers,
                            io_handler handler) override {
        if (!can_fua_) return block_file::async_write_fua_at(offset, buffers, std::move(handler));
        write(offset, buffers, true, std::move(handler));
    }

    void async_flush(op_handler handler) override {
        auto* req = start();
        req->oph.swap(handler);
        // A server without a flush command has no volatile cache to flush.
        if (can_flush_) {
            auto* cmd = new command{req, nullptr, {}};
            submit(req, cmd, ::nbd_aio_flush(h_, {&nbd_file::on_complete, cmd, nullptr}, 0), "flush");
        }
        arm();
        done_one(req);
    }

    void async_resize(std::uint64_t size, op_handler handler) override {
        std::error_code ec;
        if (read_only_) ec = errno_code(EBADF);
        else if (size > size_) ec = refuse_past_end("cannot grow the file to " + std::to_string(size) + " bytes");
        // Shrinking keeps the bytes: fixed_size() tells the image so.
        asio::post(ex_, [h = std::move(handler), ec]() mutable { std::move(h)(ec); });
    }

    void async_punch_hole(std::uint64_t offset, std::uint64_t length, op_handler handler) override {
        if (read_only_ || !can_zero_) return block_file::async_punch_hole(offset, length, std::move(handler));
        auto* req = start();
        req->oph.swap(handler);
        // Write-zeroes without NO_HOLE: the server may deallocate, and the
        // range reads as zeros afterwards (TRIM would not promise that).
        const std::uint64_t end = std::min(offset + length, size_);
        for (std::uint64_t pos = offset; pos < end;) {
            const std::uint64_t n = std::min(end - pos, max_zero_request);
            auto* cmd = new command{req, nullptr, {}};
            submit(req, cmd, ::nbd_aio_zero(h_, n, pos, {&nbd_file::on_complete, cmd, nullptr}, 0), "write zeroes");
            pos += n;
        }
        arm();
        done_one(req);
    }

    std::uint64_t size(std::error_code& ec) const override {
        ec.clear();
        return size_;
    }
    std::size_t alignment() const noexcept override { return align_; }
    bool fixed_size() const noexcept override { return true; }
    file_identity identity() const noexcept override { return identity_; }
    bool read_only() const noexcept override { return read_only_; }
    const char* backend_name() const noexcept override { return "nbd"; }

private:
    request* start() { return new request{shared_from_this(), {}, {}, 0, 1, 0}; }

    void write(std::uint64_t offset, std::span<const asio::const_buffer> buffers, bool fua, io_handler handler) {
        auto* req = start();
        req->ioh.swap(handler);
        boost::container::small_vector<piece, 8> pieces;
        for (const auto& b : buffers) {
            if (b.size()) pieces.push_back({static_cast<std::byte*>(const_cast<void*>(b.data())), b.size()});
            req->bytes += b.size();
        }
        if (read_only_) {
            req->error = EBADF;
        } else if (offset > size_ || req->bytes > size_ - offset) {
            req->error = refuse_past_end("write of " + std::to_string(req->bytes) + " bytes at offset " +
                                         std::to_string(offset))
                             .value();
        } else {
            return issue(req, true, fua, offset, pieces);
        }
        done_one(req);
    }

    std::error_code refuse_past_end(const std::string& what) {
        if (!logged_full_ && log_) {
            log_(uri_ + ": " + what + ": past the end of the export (" + std::to_string(size_) +
                 " bytes, fixed by the server): no space left");
            logged_full_ = true;
        }
        return errno_code(ENOSPC);
    }

    // Turn contiguous pieces at `offset` into commands (see the top of the file).
    void issue(request* req, bool writing, bool fua, std::uint64_t offset, std::span<const piece> pieces) {
        boost::container::small_vector<piece, 8> group;
        std::uint64_t group_at = offset;
        std::uint64_t group_len = 0;
        std::uint64_t pos = offset;
        auto flush_group = [&] {
            if (group.size() == 1) {
                one(req, writing, fua, group_at, group[0].data, group[0].len, nullptr);
            } else if (!group.empty()) {
                auto* cmd = new command{req, std::make_unique_for_overwrite<std::byte[]>(group_len), {}};
                std::size_t at = 0;
                for (const auto& p : group) {
                    if (writing) std::memcpy(cmd->bounce.get() + at, p.data, p.len);
                    else cmd->scatter.emplace_back(p.data, p.len);
                    at += p.len;
                }
                one(req, writing, fua, group_at, cmd->bounce.get(), group_len, cmd);
            }
            group.clear();
            group_len = 0;
        };
        for (piece p : pieces) {
            while (p.len) {
                const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(p.len, max_request_));
                const bool aligned = pos % align_ == 0 && (pos + n) % align_ == 0;
                if (n >= own_command_min && aligned) {
                    flush_group();
                    one(req, writing, fua, pos, p.data, n, nullptr);
                } else {
                    if (group_len + n > max_request_) flush_group();
                    if (group.empty()) group_at = pos;
                    group.push_back({p.data, n});
                    group_len += n;
                }
                p.data += n;
                p.len -= n;
                pos += n;
            }
        }
        flush_group();
        arm();
        done_one(req);
    }

    void one(request* req, bool writing, bool fua, std::uint64_t at, std::byte* data, std::size_t len, command* cmd) {
        if (!cmd) cmd = new command{req, nullptr, {}};
        const nbd_completion_callback cb{&nbd_file::on_complete, cmd, nullptr};
        const std::int64_t cookie = writing ? ::nbd_aio_pwrite(h_, data, len, at, cb, fua ? LIBNBD_CMD_FLAG_FUA : 0)
                                            : ::nbd_aio_pread(h_, data, len, at, cb, 0);
        submit(req, cmd, cookie, writing ? "write" : "read");
    }

    // After nbd_aio_*: count the command, or record why it wasn't sent
    // (libnbd calls no callback then).
    void submit(request* req, command* cmd, std::int64_t cookie, const char* what) {
        if (cookie != -1) {
            ++req->pending;
            return;
        }
        const int e = ::nbd_get_errno();
        if (!req->error) req->error = e ? e : EIO;
        note_failure(std::string(what) + ": " + ::nbd_get_error());
        delete cmd;
    }

    static int on_complete(void* user, int* error) {
        auto* cmd = static_cast<command*>(user);
        request* req = cmd->req;
        if (*error) {
            if (!req->error) req->error = *error;
        } else if (!cmd->scatter.empty()) {
            std::size_t at = 0;
            for (const auto& b : cmd->scatter) {
                std::memcpy(b.data(), cmd->bounce.get() + at, b.size());
                at += b.size();
            }
        }
        delete cmd;
        done_one(req);
        return 1;  // retire the command
    }

    // The last command of a request: post its handler (with the file, so
    // the file is let go on the executor, never inside a libnbd call).
    static void done_one(request* req) {
        if (--req->pending != 0) return;
        const std::error_code ec = req->error ? errno_code(req->error) : std::error_code{};
        auto file = std::move(req->file);
        const auto ex = file->ex_;
        if (req->ioh) {
            asio::post(ex, [h = std::move(req->ioh), file, ec, n = ec ? std::size_t{0} : req->bytes]() mutable {
                std::move(h)(ec, n);
            });
        } else {
            asio::post(ex, [h = std::move(req->oph), file, ec]() mutable { std::move(h)(ec); });
        }
        delete req;
    }

    static asio::generic::stream_protocol protocol_of(int fd) {
        ::sockaddr_storage a{};
        ::socklen_t len = sizeof a;
        ::getsockname(fd, reinterpret_cast<::sockaddr*>(&a), &len);
        return asio::generic::stream_protocol(a.ss_family, 0);
    }

    bool wants_write() const { return (::nbd_aio_get_direction(h_) & LIBNBD_AIO_DIRECTION_WRITE) != 0; }

    // Wait on libnbd's socket in the directions it asks for: writable while
    // it has bytes to send, readable while replies are due.
    void arm() {
        const unsigned dir = ::nbd_aio_get_direction(h_);
        const bool want_write = (dir & LIBNBD_AIO_DIRECTION_WRITE) != 0;
        const bool want_read = (dir & LIBNBD_AIO_DIRECTION_READ) && ::nbd_aio_in_flight(h_) > 0;
        if (want_write && !write_wait_) {
            write_wait_ = true;
            socket_.async_wait(asio::socket_base::wait_write, [self = shared_from_this()](const auto& ec) {
                self->write_wait_ = false;
                if (!ec && self->wants_write()) self->notify(::nbd_aio_notify_write(self->h_));
                self->arm();
            });
            ::pollfd p{socket_.native_handle(), POLLOUT, 0};
            if (::poll(&p, 1, 0) == 1 && (p.revents & POLLOUT)) {
                asio::post(ex_, [self = shared_from_this()] {
                    if (self->wants_write()) self->notify(::nbd_aio_notify_write(self->h_));
                    self->arm();
                });
            }
        }
        if (want_read && !read_wait_) {
            read_wait_ = true;
            socket_.async_receive(asio::buffer(&peek_, 1), asio::socket_base::message_peek,
                                  [self = shared_from_this()](const auto& ec, std::size_t) {
                                      self->read_wait_ = false;
                                      // Bytes, end of file or an error: libnbd reads and finds out.
                                      if (ec != asio::error::operation_aborted)
                                          self->notify(::nbd_aio_notify_read(self->h_));
                                      self->arm();
                                  });
        }
        // Nothing to wait for: let go of waits still queued (a write wait
        // whose edge never comes), so the io_context can run out of work.
        if (!want_read && !want_write && (read_wait_ || write_wait_)) {
            boost::system::error_code ignored;
            socket_.cancel(ignored);
        }
    }

    // A failing notify means the connection is gone; libnbd has already
    // completed every command in flight with an error.
    void notify(int r) {
        if (r == -1) note_failure(std::string("connection lost: ") + ::nbd_get_error());
    }

    void note_failure(const std::string& what) {
        if (logged_failure_ || !log_) return;
        logged_failure_ = true;
        log_(uri_ + ": " + what);
    }

    asio::any_io_executor ex_;
    nbd_handle* h_;
    asio::generic::stream_protocol::socket socket_;
    char peek_ = 0;
    std::string uri_;
    bool read_only_;
    std::function<void(std::string_view)> log_;
    std::uint64_t size_ = 0;
    bool can_flush_ = false;
    bool can_fua_ = false;
    bool can_zero_ = false;
    std::size_t align_ = 1;
    std::uint64_t max_request_ = default_max_request;
    file_identity identity_;
    bool write_wait_ = false;
    bool read_wait_ = false;
    bool logged_full_ = false;
    bool logged_failure_ = false;
};

}  // namespace

std::shared_ptr<block_file> open_nbd_file(const asio::any_io_executor& ex, const std::string& uri,
                                          const file_options& options, std::error_code& ec) {
    ec.clear();
    auto fail = [&](int e, const std::string& why, nbd_handle* h) -> std::shared_ptr<block_file> {
        ec = errno_code(e ? e : EIO);
        if (options.log) options.log(uri + ": " + why);
        if (h) ::nbd_close(h);
        return nullptr;
    };
    nbd_handle* h = ::nbd_create();
    if (!h) return fail(::nbd_get_errno(), ::nbd_get_error(), nullptr);
    // Alignment is the server's business: it refuses what it can't do.
    ::nbd_set_strict_mode(h, LIBNBD_STRICT_MASK & ~LIBNBD_STRICT_ALIGN);
    // libnbd reports the text of a server's refusal only as a debug
    // message: catch it during the handshake (debugging is off again for
    // the I/O that follows), so a refusal can say what the server said.
    std::string server_said;
    ::nbd_set_debug_callback(h, nbd_debug_callback{
                                    .callback = [](void* user, const char*, const char* msg) {
                                        static constexpr std::string_view tag = "server error message: ";
                                        const std::string_view m(msg);
                                        if (const auto at = m.find(tag); at != std::string_view::npos)
                                            *static_cast<std::string*>(user) = m.substr(at + tag.size());
                                        return 0;
                                    },
                                    .user_data = &server_said,
                                    .free = nullptr});
    const int user_debug = ::nbd_get_debug(h);  // LIBNBD_DEBUG=1 stays the user's choice
    ::nbd_set_debug(h, true);
    const int connected = ::nbd_connect_uri(h, uri.c_str());
    ::nbd_set_debug(h, user_debug == 1);  // first: with the callback gone, debug output goes to stderr
    ::nbd_clear_debug_callback(h);
    if (connected == -1) {
        const int e = ::nbd_get_errno();
        // libnbd maps a server's NBD_REP_ERR_UNKNOWN (no such export) to
        // ENOENT; a server that answered with a message is that case (a
        // missing socket is ENOENT too, but no server spoke). QEMU's words,
        // then the server's own.
        if (e == ENOENT && !server_said.empty())
            return fail(e, "Requested export not available\nserver reported: " + server_said, h);
        return fail(e, std::string("cannot connect: ") + ::nbd_get_error(), h);
    }
    if (::nbd_get_size(h) < 0) return fail(::nbd_get_errno(), ::nbd_get_error(), h);
    const bool export_read_only = ::nbd_is_read_only(h) == 1;
    if (!options.read_only && export_read_only) {
        ::nbd_aio_disconnect(h, 0);
        return fail(EROFS, "the export is read-only", h);
    }
    return std::make_shared<nbd_file>(ex, h, uri, options.read_only, options.log);
}

}  // namespace qed::detail
