// SPDX-License-Identifier: BSL-1.0
#include "server/nbd_connection.hpp"

#include <algorithm>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/write.hpp>
#include <cassert>
#include <cctype>
#include <new>

namespace qed::nbd {

namespace {

constexpr std::size_t buffer_alignment = 4096;  // O_DIRECT (cache=none) friendly
constexpr std::uint64_t sector = 512;

struct aligned_delete {
    void operator()(std::byte* p) const noexcept { ::operator delete[](p, std::align_val_t{buffer_alignment}); }
};
using aligned_buffer = std::unique_ptr<std::byte[], aligned_delete>;

/// nullptr when memory is short (the request then fails with ENOMEM).
aligned_buffer allocate(std::size_t n) {
    return aligned_buffer(
        static_cast<std::byte*>(::operator new[](n, std::align_val_t{buffer_alignment}, std::nothrow)));
}

void append32(std::vector<std::byte>& out, std::uint32_t v) {
    std::byte b[4];
    put32(b, v);
    out.insert(out.end(), b, b + 4);
}

bool all_zero(const std::byte* p, std::size_t n) noexcept {
    // The buffer is 4096-aligned and n a multiple of 512: compare words.
    const auto* w = reinterpret_cast<const std::uint64_t*>(p);
    for (std::size_t i = 0; i < n / 8; ++i)
        if (w[i]) return false;
    return true;
}

bool is_write(std::uint16_t type) noexcept {
    return type == cmd_write || type == cmd_write_zeroes || type == cmd_trim;
}

}  // namespace

/// One request from its header to its reply.
struct connection::transaction {
    request req;
    aligned_buffer data;      ///< READ result / WRITE payload
    std::size_t charged = 0;  ///< bytes counted in buffered_
    std::array<std::byte, simple_reply_size + structured_header_size> head{};
    std::size_t head_size = 0;
    bool send_data = false;       ///< the reply carries `data` after `head`
    std::vector<std::byte> tail;  ///< further reply bytes (error chunk payload, block status chunks)
    std::uint32_t refused = 0;    ///< error decided before the payload was read
};

connection::connection(socket_type socket, server_context& ctx, std::uint64_t id, std::string peer,
                       closed_handler closed)
    : stream_(std::move(socket)),
      ctx_(ctx),
      id_(id),
      peer_(std::move(peer)),
      closed_(std::move(closed)),
      handshake_timer_(stream_.get_executor()),
      home_(stream_.get_executor()) {}

connection::~connection() = default;

void connection::log(std::string_view what) const {
    if (ctx_.log) ctx_.log("client " + std::to_string(id_) + " (" + peer_ + "): " + std::string(what));
}

void connection::warn(std::string_view what) const {
    if (ctx_.warn) ctx_.warn("client " + std::to_string(id_) + " (" + peer_ + "): " + std::string(what));
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

void connection::start() {
    boost::system::error_code ignored;
    stream_.socket().set_option(boost::asio::ip::tcp::no_delay(true), ignored);  // fails harmlessly on unix sockets
    handshake_timer_.expires_after(ctx_.lim.handshake_timeout);
    handshake_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
        // (handshake_over_, not reading_: the handshake timer lives on the
        // thread of the handshake, which a connection may have left.)
        if (ec || self->handshake_over_) return;
        self->log("handshake timed out");
        boost::system::error_code ignore;
        self->stream_.socket().close(ignore);
    });
    report_.unknown_export = [this](std::string_view name) { on_unknown_export(name); };
    async_handshake(stream_, ctx_.infos, ctx_.tls, report_,
                    [self = shared_from_this()](std::error_code ec, session s) { self->on_handshake(ec, s); });
}

void connection::on_handshake(std::error_code ec, const session& s) {
    handshake_over_ = true;
    handshake_timer_.cancel();
    if (ec) {
        // Refusals (TLS, authorization) are always reported; other
        // handshake failures only with -v.
        if (!report_.refusal.empty())
            warn(report_.refusal);
        else if (ec != errc::aborted)
            log("handshake failed: " + ec.message());
        broken_ = true;
        return reader_done();
    }
    session_ = s;
    export_ = ctx_.exports.at(s.export_index);
    log(std::string("handshake done") + (s.structured ? ", structured replies" : "") +
        (report_.tls ? ", TLS" + (report_.identity.empty() ? std::string() : " as '" + report_.identity + "'")
                     : std::string()));
    if (export_->executor && export_->executor != home_) {
        // --threads: the export's image lives on another thread. A plain
        // socket moves there, so the connection and its image share one
        // thread and no locks; a TLS stream cannot move, so its image
        // requests are posted to the image's thread and complete back here.
        if (report_.tls) {
            remote_image_ = true;
        } else {
            boost::system::error_code mec;
            stream_.move_to(export_->executor, mec);
            if (mec) {
                warn("could not move to the thread of its export: " + mec.message());
                broken_ = true;
                return reader_done();
            }
            home_ = export_->executor;
            boost::asio::post(home_, [self = shared_from_this()] { self->read_next(); });
            return;
        }
    }
    read_next();
}

void connection::on_unknown_export(std::string_view name) {
    // Always logged, like other refusals; once per name in a row (clients
    // ask in SET_META_CONTEXT, then in GO) and a few names per connection,
    // so a client cannot fill the log by guessing.
    constexpr unsigned most = 4;
    if (name == last_unknown_ || unknown_logged_ > most) return;
    last_unknown_ = std::string(name);
    if (++unknown_logged_ > most) return warn("asked for more unknown exports (not logged)");
    std::string shown;
    for (const char ch : name.substr(0, 256)) shown += std::isprint(static_cast<unsigned char>(ch)) ? ch : '?';
    if (name.size() > 256) shown += "...";
    warn("asked for unknown export '" + shown + "'");
}

// ---------------------------------------------------------------------------
// Reading requests
// ---------------------------------------------------------------------------

void connection::read_next() {
    if (stopping_ || broken_) return reader_done();
    // Bounded count; memory is checked per request once its header is in.
    if (in_flight_ >= ctx_.lim.max_in_flight || buffered_ >= ctx_.lim.max_buffered) {
        reading_ = reader::paused;
        return;
    }
    reading_ = reader::header;
    boost::asio::async_read(
        stream_, boost::asio::buffer(header_),
        [self = shared_from_this()](boost::system::error_code ec, std::size_t) { self->on_header(ec); });
}

void connection::on_header(boost::system::error_code ec) {
    if (ec || stopping_) {
        if (ec && ec != boost::asio::error::eof && ec != boost::asio::error::operation_aborted)
            if (ec != boost::asio::ssl::error::stream_truncated) log("read failed: " + ec.message());
        return reader_done();
    }
    auto t = std::make_unique<transaction>();
    t->req = decode_request(header_.data());
    if (t->req.magic != request_magic) {
        log("bad request magic; closing");
        abort();
        return reader_done();
    }
    if (t->req.type == cmd_disc) {
        log("disconnect requested");
        return reader_done();  // answer what is in flight, then close
    }
    ++in_flight_;
    admit(std::move(t));
}

namespace {

/// Buffer bytes a request will hold (READ result or WRITE payload); 0 for
/// those refused for their size, which are never buffered.
std::size_t memory_need(const request& r, std::uint32_t max_payload) {
    if ((r.type == cmd_read || r.type == cmd_write) && r.length <= max_payload) return r.length;
    return 0;
}

}  // namespace

void connection::admit(transaction_ptr t) {
    const std::size_t need = memory_need(t->req, ctx_.lim.max_payload);
    // The connection's own bound first: over it, wait for our own replies
    // to be written (nothing else can free our bytes).
    if (buffered_ && buffered_ + need > ctx_.lim.max_buffered) {
        pending_ = std::move(t);
        reading_ = reader::paused;
        return;
    }
    // Then the server-wide one: over it, wait in line.
    if (need && ctx_.budget && !ctx_.budget->try_take(this, need)) {
        pending_ = std::move(t);
        reading_ = reader::waiting;
        ctx_.budget->wait(shared_from_this(), need);
        return;
    }
    proceed(std::move(t), need);
}

void connection::post_grant(std::size_t n) {
    boost::asio::post(stream_.get_executor(), [self = shared_from_this(), n] { self->on_granted(n); });
}

void connection::on_granted(std::size_t n) {
    if (reading_ != reader::waiting || !pending_) {
        // Stopped or aborted after the grant was posted.
        ctx_.budget->give_back(this, n);
        return;
    }
    proceed(std::move(pending_), n);
}

void connection::proceed(transaction_ptr t, std::size_t need) {
    // The bytes are counted now, before any is allocated: the bounds hold
    // for what is about to be held, not only for what already is.
    t->charged = need;
    buffered_ += need;
    if (t->req.type == cmd_write) return read_payload(std::move(t));
    start_request(std::move(t));
    read_next();
}

void connection::resume() {
    if (reading_ != reader::paused) return;
    if (pending_) return admit(std::move(pending_));
    read_next();
}

void connection::drop_pending() {
    if (reading_ == reader::waiting && ctx_.budget) ctx_.budget->cancel(this);
    if (pending_) release(std::move(pending_));  // read but never started: no reply
}

void connection::read_payload(transaction_ptr t) {
    const std::uint32_t len = t->req.length;
    if (len > ctx_.lim.max_payload) {
        // The payload still follows the header: skip it to stay in step.
        t->refused = err_overflow;
        return discard_payload(std::move(t), len);
    }
    if (len == 0) {
        start_request(std::move(t));
        return read_next();
    }
    t->data = allocate(len);
    if (!t->data) {
        t->refused = err_nomem;
        return discard_payload(std::move(t), len);
    }
    reading_ = reader::payload;
    auto* p = t->data.get();
    boost::asio::async_read(
        stream_, boost::asio::buffer(p, len),
        [self = shared_from_this(), t = std::move(t)](boost::system::error_code ec, std::size_t) mutable {
            if (ec) {
                self->release(std::move(t));
                return self->reader_done();
            }
            // Started even if a stop came meanwhile: the client sent it whole.
            self->start_request(std::move(t));
            self->read_next();
        });
}

void connection::discard_payload(transaction_ptr t, std::uint64_t left) {
    if (left == 0) {
        const std::uint32_t err = t->refused;
        reply_error(std::move(t), err,
                    err == err_overflow ? "request larger than the maximum payload" : "out of memory");
        return read_next();
    }
    scratch_.resize(64 * 1024);
    reading_ = reader::discard;
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, scratch_.size()));
    boost::asio::async_read(
        stream_, boost::asio::buffer(scratch_.data(), n),
        [self = shared_from_this(), t = std::move(t), left](boost::system::error_code ec, std::size_t got) mutable {
            if (ec) {
                self->release(std::move(t));
                return self->reader_done();
            }
            self->discard_payload(std::move(t), left - got);
        });
}

void connection::reader_done() {
    reading_ = reader::done;
    check_done();
}

// ---------------------------------------------------------------------------
// Starting requests on the image
// ---------------------------------------------------------------------------

std::uint32_t connection::validate(const transaction& t, std::string& why) const {
    const request& r = t.req;
    const std::uint64_t size = export_->info.size;
    const bool read_only = (session_.flags & flag_read_only) != 0;

    std::uint16_t allowed = cmd_flag_fua;  // accepted (and ignored where meaningless) on every command
    switch (r.type) {
        case cmd_read:
            if (session_.structured) allowed |= cmd_flag_df;
            break;
        case cmd_write:
        case cmd_flush:
            break;
        case cmd_write_zeroes:
            allowed |= cmd_flag_no_hole;
            break;
        case cmd_block_status:
            allowed |= cmd_flag_req_one;
            break;
        case cmd_trim:
            if (export_->discard) break;
            why = "TRIM not advertised (qed-nbd --discard=unmap enables it)";
            return err_inval;
        default:
            // CACHE and RESIZE are not advertised.
            why = "unsupported command " + std::string(command_name(r.type)) + " (" + std::to_string(r.type) + ")";
            return err_inval;
    }
    if (r.flags & ~allowed) {
        why = "unsupported flags for " + std::string(command_name(r.type));
        return err_inval;
    }
    if (r.type == cmd_flush) return 0;
    if (read_only && is_write(r.type)) {
        why = "export is read-only";
        return err_perm;
    }
    if (r.type == cmd_read && r.length > ctx_.lim.max_payload) {
        why = "request larger than the maximum payload";
        return err_overflow;
    }
    if (r.type == cmd_block_status) {
        if (!session_.base_allocation && !session_.allocation_depth) {
            why = "no metadata context negotiated";
            return err_inval;
        }
        if (r.length == 0) {
            why = "zero-length block status";
            return err_inval;
        }
        // Block status is lenient about alignment: it only reads metadata.
    } else if (r.offset % sector || r.length % sector) {
        why = "offset and length must be multiples of 512";
        return err_inval;
    }
    if (r.offset > size || r.length > size - r.offset) {
        why = "request beyond the end of the export";
        return is_write(r.type) ? err_nospc : err_inval;
    }
    return 0;
}

void connection::start_request(transaction_ptr t) {
    std::string why;
    if (const std::uint32_t err = validate(*t, why)) return reply_error(std::move(t), err, why);
    const request& r = t->req;
    if ((r.type == cmd_read || r.type == cmd_write) && r.length == 0) return reply_ok(std::move(t));
    if (r.type == cmd_read) {
        t->data = allocate(r.length);
        if (!t->data) return reply_error(std::move(t), err_nomem, "out of memory");
    }
    if (r.type != cmd_read && r.type != cmd_write && r.type != cmd_write_zeroes && r.type != cmd_trim &&
        r.type != cmd_flush && r.type != cmd_block_status)
        return reply_error(std::move(t), err_inval, "unsupported command");
    if (remote_image_)
        return boost::asio::post(
            export_->executor, [self = shared_from_this(), t = std::move(t)]() mutable { self->issue(std::move(t)); });
    issue(std::move(t));
}

template <class F>
void connection::at_home(F&& f) {
    if (remote_image_)
        boost::asio::post(home_, std::forward<F>(f));
    else
        f();
}

void connection::issue(transaction_ptr t) {
    // Runs on the image's thread; completions go back to the connection's
    // (at_home). Only the export's fixed settings are read here.
    const request& r = t->req;
    const bool fua = export_->writethrough || (r.flags & cmd_flag_fua);
    image& img = export_->image;
    auto self = shared_from_this();
    auto done = [self](transaction_ptr done_t, std::error_code ec) {
        self->at_home([self, t = std::move(done_t), ec]() mutable { self->on_done(std::move(t), ec); });
    };
    switch (r.type) {
        case cmd_read: {
            auto* p = t->data.get();
            img.async_read_at(
                r.offset, boost::asio::buffer(p, r.length),
                [self, t = std::move(t)](std::error_code ec, std::size_t) mutable {
                    self->at_home([self, t = std::move(t), ec]() mutable { self->on_read(std::move(t), ec); });
                });
            return;
        }
        case cmd_write: {
            const auto* p = t->data.get();
            if (export_->zeroes != detect_zeroes::off && all_zero(p, r.length)) {
                // As qemu's detect-zeroes: the write becomes a write of zeroes,
                // same result on read. Whole clusters become QED zero clusters
                // in both modes, as QEMU's QED driver makes them (the library
                // writes real zeros only for NBD's NO_HOLE).
                zero_options o;
                o.may_unmap = true;
                o.fua = fua;
                img.async_write_zeroes(r.offset, r.length, o, [done, t = std::move(t)](std::error_code ec) mutable {
                    done(std::move(t), ec);
                });
                return;
            }
            img.async_write_at(
                r.offset, boost::asio::buffer(p, r.length), write_options{fua},
                [done, t = std::move(t)](std::error_code ec, std::size_t) mutable { done(std::move(t), ec); });
            return;
        }
        case cmd_write_zeroes: {
            zero_options o;
            o.may_unmap = (r.flags & cmd_flag_no_hole) == 0;
            o.fua = fua;
            img.async_write_zeroes(r.offset, r.length, o,
                                   [done, t = std::move(t)](std::error_code ec) mutable { done(std::move(t), ec); });
            return;
        }
        case cmd_trim:
            // Whole clusters of the range give their space back (image::async_discard);
            // FUA: the discard is durable before the reply.
            img.async_discard(r.offset, r.length, [self, done, t = std::move(t), fua](const auto& ec) mutable {
                if (ec || !fua) return done(std::move(t), ec);
                self->export_->image.async_flush(
                    [done, t = std::move(t)](const auto& fec) mutable { done(std::move(t), fec); });
            });
            return;
        case cmd_flush:
            img.async_flush([done, t = std::move(t)](std::error_code ec) mutable { done(std::move(t), ec); });
            return;
        case cmd_block_status: {
            // Ask the driver about the enclosing 512-byte aligned range; the
            // descriptors are clipped back to what was asked.
            const std::uint64_t first = r.offset / sector * sector;
            const std::uint64_t end =
                std::min(export_->info.size, (r.offset + r.length + sector - 1) / sector * sector);
            img.async_block_status(first, end - first,
                                   [self, t = std::move(t)](std::error_code ec, std::vector<extent> v) mutable {
                                       self->at_home([self, t = std::move(t), ec, v = std::move(v)]() mutable {
                                           self->on_block_status(std::move(t), ec, v);
                                       });
                                   });
            return;
        }
        default:
            // start_request() lets only the commands above through.
            assert(false);
    }
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

void connection::on_read(transaction_ptr t, std::error_code ec) {
    if (ec) {
        warn("read at " + std::to_string(t->req.offset) + " failed: " + ec.message());
        return reply_error(std::move(t), to_nbd_error(ec, false), ec.message());
    }
    const request& r = t->req;
    if (session_.structured) {
        // One OFFSET_DATA chunk, final: the whole result is in hand, so no
        // error can follow it (and NBD_CMD_FLAG_DF holds trivially).
        encode_structured_header(t->head.data(), reply_flag_done, reply_type_offset_data, r.cookie, r.length + 8);
        put64(t->head.data() + structured_header_size, r.offset);
        t->head_size = structured_header_size + 8;
    } else {
        encode_simple_reply(t->head.data(), 0, r.cookie);
        t->head_size = simple_reply_size;
    }
    t->send_data = true;
    queue_reply(std::move(t));
}

void connection::on_done(transaction_ptr t, std::error_code ec) {
    if (ec) {
        warn(std::string(command_name(t->req.type)) + " at " + std::to_string(t->req.offset) +
             " failed: " + ec.message());
        const std::uint32_t err = to_nbd_error(ec, is_write(t->req.type));
        return reply_error(std::move(t), err, ec.message());
    }
    reply_ok(std::move(t));
}

void connection::on_block_status(transaction_ptr t, std::error_code ec, const std::vector<extent>& extents) {
    if (ec) return reply_error(std::move(t), to_nbd_error(ec, false), ec.message());
    const request& r = t->req;
    const std::uint64_t begin = r.offset;
    const std::uint64_t end = r.offset + r.length;
    const bool one = (r.flags & cmd_flag_req_one) != 0;

    struct wanted {
        bool on;
        std::uint32_t id;
        bool depth;
    };
    const wanted contexts[] = {{session_.base_allocation, base_allocation_id, false},
                               {session_.allocation_depth, allocation_depth_id, true}};
    std::size_t last = 0;
    for (std::size_t i = 0; i < 2; ++i)
        if (contexts[i].on) last = i;

    for (std::size_t i = 0; i < 2; ++i) {
        const wanted& c = contexts[i];
        if (!c.on) continue;
        // Descriptors: (length, flags); neighbours with equal flags merge.
        std::vector<std::pair<std::uint32_t, std::uint32_t>> desc;
        for (const extent& e : extents) {
            const std::uint64_t s = std::max(e.offset, begin);
            const std::uint64_t n = std::min(e.offset + e.length, end);
            if (s >= n) continue;
            const std::uint32_t flags =
                c.depth ? (e.present ? e.depth + 1 : 0) : ((e.data ? 0 : state_hole) | (e.zero ? state_zero : 0));
            // Lengths fit: together they never exceed the 32-bit request length.
            const auto len = static_cast<std::uint32_t>(n - s);
            if (!desc.empty() && desc.back().second == flags) {
                desc.back().first += len;
            } else {
                if (!desc.empty() && (one || desc.size() >= ctx_.lim.max_descriptors)) break;
                desc.emplace_back(len, flags);
            }
        }
        if (desc.empty()) return reply_error(std::move(t), err_io, "no block status from the driver");
        const std::size_t payload = 4 + 8 * desc.size();
        const std::size_t at = t->tail.size();
        t->tail.resize(at + structured_header_size);
        encode_structured_header(t->tail.data() + at, i == last ? reply_flag_done : 0, reply_type_block_status,
                                 r.cookie, static_cast<std::uint32_t>(payload));
        append32(t->tail, c.id);
        for (const auto& [len, flags] : desc) {
            append32(t->tail, len);
            append32(t->tail, flags);
        }
    }
    // Large replies count against the memory bound like data buffers.
    t->charged += t->tail.size();
    buffered_ += t->tail.size();
    if (ctx_.budget) ctx_.budget->force_take(this, t->tail.size());
    queue_reply(std::move(t));
}

void connection::reply_ok(transaction_ptr t) {
    const request& r = t->req;
    if (session_.structured && r.type == cmd_read) {
        // A read must be answered with structured chunks; empty read: NONE.
        encode_structured_header(t->head.data(), reply_flag_done, reply_type_none, r.cookie, 0);
        t->head_size = structured_header_size;
    } else {
        encode_simple_reply(t->head.data(), 0, r.cookie);
        t->head_size = simple_reply_size;
    }
    queue_reply(std::move(t));
}

void connection::reply_error(transaction_ptr t, std::uint32_t error, std::string_view message) {
    const request& r = t->req;
    if (session_.structured) {
        const std::string_view msg = message.substr(0, max_string);
        encode_structured_header(t->head.data(), reply_flag_done, reply_type_error, r.cookie,
                                 static_cast<std::uint32_t>(6 + msg.size()));
        t->head_size = structured_header_size;
        t->tail.resize(6);
        put32(t->tail.data(), error);
        put16(t->tail.data() + 4, static_cast<std::uint16_t>(msg.size()));
        const auto* p = reinterpret_cast<const std::byte*>(msg.data());
        t->tail.insert(t->tail.end(), p, p + msg.size());
    } else {
        encode_simple_reply(t->head.data(), error, r.cookie);
        t->head_size = simple_reply_size;
    }
    t->send_data = false;
    queue_reply(std::move(t));
}

void connection::queue_reply(transaction_ptr t) {
    if (broken_) {
        release(std::move(t));
        return check_done();
    }
    replies_.push_back(std::move(t));
    if (!writing_) write_replies();
}

void connection::write_replies() {
    // Everything that is ready goes out in one gathered write (bounded so a
    // burst of small replies doesn't build an endless iovec).
    constexpr std::size_t max_batch = 32;
    batch_buffers_.clear();
    while (!replies_.empty() && batch_.size() < max_batch) {
        transaction_ptr t = std::move(replies_.front());
        replies_.pop_front();
        batch_buffers_.emplace_back(t->head.data(), t->head_size);
        if (t->send_data) batch_buffers_.emplace_back(t->data.get(), t->req.length);
        if (!t->tail.empty()) batch_buffers_.emplace_back(t->tail.data(), t->tail.size());
        batch_.push_back(std::move(t));
    }
    writing_ = true;
    boost::asio::async_write(
        stream_, batch_buffers_,
        [self = shared_from_this()](boost::system::error_code ec, std::size_t) { self->on_written(ec); });
}

void connection::on_written(std::error_code ec) {
    writing_ = false;
    for (auto& t : batch_) release(std::move(t));
    batch_.clear();
    if (ec) {
        if (!broken_) log("write failed: " + ec.message());
        abort();
    }
    if (!replies_.empty() && !broken_) write_replies();
    resume();
    check_done();
}

void connection::release(transaction_ptr t) {
    --in_flight_;
    buffered_ -= t->charged;
    if (ctx_.budget && t->charged) ctx_.budget->give_back(this, t->charged);
}

// ---------------------------------------------------------------------------
// Ending
// ---------------------------------------------------------------------------

void connection::stop() {
    stopping_ = true;
    switch (reading_) {
        case reader::handshake:
            abort();
            break;
        case reader::header: {
            // Wake the pending header read (it sees end of stream); replies can
            // still be written.
            boost::system::error_code ignored;
            stream_.socket().shutdown(socket_type::shutdown_receive, ignored);
            break;
        }
        case reader::paused:
        case reader::waiting:
            // A request read but not started is dropped unanswered.
            drop_pending();
            reader_done();
            break;
        case reader::payload:
        case reader::discard:
        case reader::done:
            break;  // the reader stops after the current payload
    }
}

void connection::abort() {
    broken_ = true;
    boost::system::error_code ignored;
    stream_.socket().close(ignored);  // pending socket operations complete with operation_aborted
    while (!replies_.empty()) {
        release(std::move(replies_.front()));
        replies_.pop_front();
    }
    if (reading_ == reader::paused || reading_ == reader::waiting) {
        drop_pending();
        reading_ = reader::done;
    }
    check_done();
}

void connection::check_done() {
    if (finished_ || reading_ != reader::done || in_flight_ != 0 || writing_) return;
    finished_ = true;
    if (!handshake_over_) handshake_timer_.cancel();  // (else cancelled already, on the handshake's thread)
    boost::system::error_code ignored;
    if (stream_.socket().is_open()) {
        stream_.socket().shutdown(socket_type::shutdown_both, ignored);
        stream_.socket().close(ignored);
    }
    log("closed");
    // Tell the server from a fresh handler: it may be iterating over its
    // connections (stop(), abort()) when this runs.
    if (closed_) boost::asio::post(stream_.get_executor(), [self = shared_from_this()] { self->closed_(*self); });
}

}  // namespace qed::nbd

namespace qed::nbd {

// ---------------------------------------------------------------------------
// memory_budget
// ---------------------------------------------------------------------------

std::size_t memory_budget::used() const {
    std::lock_guard lock(mutex_);
    return used_;
}

bool memory_budget::within_share_locked(const connection* c, std::size_t n) const {
    const auto it = held_.find(c);
    const std::size_t held = it == held_.end() ? 0 : it->second;
    if (held == 0) return true;  // everyone may have something in flight
    // Connections holding bytes or waiting for them (c among them).
    std::size_t active = held_.size();
    for (const waiter& w : waiters_)
        if (w.who != c && held_.find(w.who) == held_.end()) ++active;
    return held + n <= limit_ / std::max<std::size_t>(active, 1);
}

void memory_budget::take_locked(const connection* c, std::size_t n) {
    used_ += n;
    held_[c] += n;
}

bool memory_budget::fits_locked(const connection* c, std::size_t n) const {
    return used_ + n <= (holds_locked(c) ? limit_ - reserve_ : limit_);
}

bool memory_budget::try_take(const connection* c, std::size_t n) {
    std::lock_guard lock(mutex_);
    if (!fits_locked(c, n) || !within_share_locked(c, n)) return false;
    // Waiters within their share go first -- for a connection holding
    // nothing, only those that hold nothing either (the reserve is theirs).
    const bool newcomer = !holds_locked(c);
    for (const waiter& w : waiters_)
        if (within_share_locked(w.who, w.n) && (!newcomer || !holds_locked(w.who))) return false;
    take_locked(c, n);
    return true;
}

void memory_budget::force_take(const connection* c, std::size_t n) {
    std::lock_guard lock(mutex_);
    take_locked(c, n);
}

void memory_budget::grant_locked(grants& out) {
    // First come, first served among the waiters within their share, in two
    // lines: connections that hold bytes (bounded by limit - reserve) and
    // those that hold none (which may use the reserve). One that does not
    // fit stops the rest of its own line, not the other.
    bool holders_stopped = false, newcomers_stopped = false;
    for (auto it = waiters_.begin(); it != waiters_.end();) {
        const bool holder = holds_locked(it->who);
        bool& stopped = holder ? holders_stopped : newcomers_stopped;
        if (stopped || !within_share_locked(it->who, it->n)) {
            ++it;  // over its share, or behind one that waits: others go first
            continue;
        }
        if (!fits_locked(it->who, it->n)) {
            stopped = true;
            ++it;
            continue;
        }
        auto c = it->c.lock();
        if (c) {
            take_locked(it->who, it->n);
            out.emplace_back(std::move(c), it->n);
        }
        it = waiters_.erase(it);
    }
}

void memory_budget::give_back(const connection* c, std::size_t n) {
    grants granted;
    {
        std::lock_guard lock(mutex_);
        auto it = held_.find(c);
        assert(used_ >= n && it != held_.end() && it->second >= n);  // every byte given back was taken
        used_ -= n;
        if ((it->second -= n) == 0) held_.erase(it);
        grant_locked(granted);
    }
    for (auto& [g, bytes] : granted) g->post_grant(bytes);
}

void memory_budget::wait(const std::shared_ptr<connection>& c, std::size_t n) {
    grants granted;
    {
        std::lock_guard lock(mutex_);
        waiters_.push_back({c.get(), c, n});
        grant_locked(granted);  // bytes may have come back since try_take
    }
    for (auto& [g, bytes] : granted) g->post_grant(bytes);
}

void memory_budget::cancel(const connection* c) {
    grants granted;
    {
        std::lock_guard lock(mutex_);
        std::erase_if(waiters_, [c](const waiter& w) { return w.who == c; });
        grant_locked(granted);  // fewer active connections: larger shares
    }
    for (auto& [g, bytes] : granted) g->post_grant(bytes);
}

}  // namespace qed::nbd
