// SPDX-License-Identifier: BSL-1.0
// Block status: which guest ranges are data, zero clusters or unallocated,
// and at which level of the backing chain the data lives.
// (A member of qed_image: it walks the image's tables and its backing
// chain, so it lives with the image, over cluster/find_cluster.)
#include <algorithm>

#include "cluster/find_cluster.hpp"
#include "image/qed_image.hpp"
#include "table/co_io.hpp"

namespace qed::detail {
namespace {

/// A run of data clusters at `host`: ranges the image file holds as holes
/// (discarded or zeroed in place, or never written) are reported as zero,
/// not data, as for a raw file's holes; they stay present (allocated here,
/// hiding any backing file). One SEEK_DATA/SEEK_HOLE pair per change of
/// state; a file that can't tell is all data.
void append_data_run(const block_file& file, std::vector<extent>& out, std::uint64_t pos, std::uint64_t len,
                     unsigned depth, std::uint64_t host) {
    while (len) {
        bool data = true;
        std::uint64_t run = len;
        if (file.allocation(host, len, data, run)) {
            data = true;
            run = len;
        }
        run = std::clamp<std::uint64_t>(run, 1, len);
        append_extent(out, {pos, run, depth, true, !data, data, host});
        pos += run;
        host += run;
        len -= run;
    }
}

}  // namespace

void qed_image::block_status(std::uint64_t offset, std::uint64_t length, unsigned depth, status_handler handler) {
    run_request([this, keep = self(), offset, length, depth, h = std::move(handler)]() mutable {
        auto out = std::make_shared<std::vector<extent>>();
        co::run(ex_, do_block_status(offset, length, depth, out),
                [this, keep, out, h = std::move(h)](std::error_code ec) mutable {
                    if (ec) out->clear();
                    complete(std::move(h), ec, std::move(*out));
                    request_done();
                });
    });
}

boost::asio::awaitable<std::error_code> qed_image::do_block_status(std::uint64_t offset, std::uint64_t length,
                                                                   unsigned depth,
                                                                   std::shared_ptr<std::vector<extent>> out) {
    if (life_ == lifecycle::closed) co_return errc::closed;
    if (auto ec = validate_request(offset, length, meta_.hdr().image_size)) co_return ec;
    const geometry& g = meta_.geo();
    l2_ref held;
    std::uint64_t pos = offset;
    const std::uint64_t end = offset + length;
    while (pos < end) {
        const lookup r = find_cluster(meta_, held, pos, end - pos);
        if (r.ec) co_return r.ec;
        if (r.need_table) {
            metadata* m = &meta_;
            const std::uint64_t t = r.table_offset;
            if (auto ec = co_await co::op([m, t](op_handler done) { m->load_l2(t, std::move(done)); })) co_return ec;
            continue;
        }
        std::uint64_t len = r.run.length;
        if (r.run.what == cluster_run::kind::no_table) {
            // Every following empty L1 entry joins this run in one step: the
            // cost is one L1 read per entry, never a lookup per L2 span, so
            // an empty maximum-size image answers in one extent. (pos + len
            // is the start of the next L1 entry's range, or `end`.)
            std::uint64_t stop = pos + len;
            while (stop < end && meta_.l1()[g.l1_index(stop)] == 0) stop += std::min(g.l2_span(), end - stop);
            len = stop - pos;
        }
        switch (r.run.what) {
            case cluster_run::kind::data:
                append_data_run(meta_.file(), *out, pos, len, depth, r.run.host_offset);
                break;
            case cluster_run::kind::zero:
                append_extent(*out, {pos, len, depth, true, true, false, std::nullopt});
                break;
            case cluster_run::kind::unallocated:
            case cluster_run::kind::no_table: {
                // These bytes come from a backing file that was not opened: not
                // in this image, contents unknown (not zero).
                if (!backing_ && meta_.hdr().has(feature_backing_file)) {
                    append_extent(*out, {pos, len, depth + 1, false, false, false, std::nullopt});
                    break;
                }
                const std::uint64_t in_backing = backing_ ? bytes_in_backing(pos, len, backing_->size()) : 0;
                if (in_backing) {
                    device* b = backing_.get();  // backing_ owns it; see co_io.hpp on captures
                    auto [ec, ext] =
                        co_await boost::asio::async_initiate<decltype(co::use_tuple),
                                                             void(boost::system::error_code, std::vector<extent>)>(
                            [b, pos, in_backing, depth](auto done) {
                                b->block_status(pos, in_backing, depth + 1, status_handler(std::move(done)));
                            },
                            co::use_tuple);
                    if (ec) co_return ec;
                    for (const auto& e : ext) append_extent(*out, e);
                }
                if (in_backing < len)
                    append_extent(*out, {pos + in_backing, len - in_backing, depth, false, true, false, std::nullopt});
                break;
            }
        }
        pos += len;
    }
    held.reset();
    meta_.cache().trim();
    co_return std::error_code{};
}

}  // namespace qed::detail
