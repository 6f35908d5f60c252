// SPDX-License-Identifier: BSL-1.0
// A QED file laid out by hand in memory (header, empty L1 table, room for
// clusters) and the table layer's metadata loaded from it: for tests of the
// layers below the image (cluster lookup, the allocating batch), which
// don't go through qed::image.
#pragma once

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/test/unit_test.hpp>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include "support/fault_file.hpp"
#include "support/recording_file.hpp"
#include "table/co_io.hpp"
#include "table/metadata.hpp"

namespace qed::test {

struct metadata_fixture {
    /// An image of `image_size` bytes whose file holds the header cluster,
    /// the L1 table and `spare_clusters` more clusters (zeros).
    metadata_fixture(std::uint32_t cluster_size, std::uint32_t table_size, std::uint64_t image_size,
                     std::uint64_t spare_clusters = 64, bool backing = false) {
        header h;
        h.cluster_size = cluster_size;
        h.table_size = table_size;
        h.header_size = 1;
        h.l1_table_offset = cluster_size;
        h.image_size = std::min(image_size, max_image_size(cluster_size, table_size));
        const std::string name = "base.raw";
        if (backing) {
            h.features |= feature_backing_file | feature_backing_format_no_probe;
            h.backing_filename_offset = header_struct_size;
            h.backing_filename_size = static_cast<std::uint32_t>(name.size());
        }
        const auto bytes = encode(h);
        storage->resize(h.l1_table_offset + std::uint64_t{cluster_size} * table_size + spare_clusters * cluster_size);
        storage->write(0, bytes);
        if (backing) storage->write(header_struct_size, std::as_bytes(std::span(name.data(), name.size())));
        auto faulty = std::make_shared<fault_file>(make_memory_file(ioc.get_executor(), storage), faults);
        file = std::make_shared<recording_file>(faulty, log, "image");
        meta.emplace(ioc.get_executor(), file, [] { return std::shared_ptr<void>(); });
        std::string detail;
        std::optional<std::error_code> r;
        detail::co::run(ioc.get_executor(), meta->load(50, 1ull << 30, detail), [&](std::error_code ec) { r = ec; });
        ioc.run();
        BOOST_REQUIRE_MESSAGE(r && !*r, "load: " << (r ? r->message() : "did not finish") << " " << detail);
        log->clear();
        faults->count = {0, 0, 0, 0};
    }

    /// Run the io_context until nothing is left to do.
    void run() {
        ioc.restart();
        ioc.run();
    }

    /// An L2 table at `offset`, loaded and cached, linked from L1 entry `l1_index`.
    detail::l2_ref link_table(std::uint64_t l1_index, std::uint64_t offset) {
        auto t = std::make_shared<detail::l2_entry>(offset, meta->geo().table_entries);
        t->loaded = true;
        meta->cache().insert(t);
        meta->l1()[l1_index] = offset;
        return t;
    }

    /// The cluster index `n` clusters after the L1 table (inside the file).
    std::uint64_t cluster(std::uint64_t n) const {
        const auto& g = meta->geo();
        return meta->hdr().l1_table_offset + g.table_bytes + n * g.cluster_size;
    }

    boost::asio::io_context ioc;
    std::shared_ptr<memory_storage> storage = std::make_shared<memory_storage>();
    std::shared_ptr<io_log> log = std::make_shared<io_log>();
    std::shared_ptr<fault_plan> faults = std::make_shared<fault_plan>();  ///< counts from the first I/O after load
    std::shared_ptr<block_file> file;
    std::optional<detail::metadata> meta;
};

}  // namespace qed::test
