// SPDX-License-Identifier: BSL-1.0
#include "block_file/blocking_pool.hpp"

#include <algorithm>
#include <mutex>
#include <thread>

namespace qed::detail {

std::shared_ptr<boost::asio::thread_pool> blocking_pool() {
    static std::mutex mutex;
    static std::weak_ptr<boost::asio::thread_pool> current;
    std::lock_guard lock(mutex);
    if (auto pool = current.lock()) return pool;
    // Enough threads to keep a queue-depth-32 workload busy on a small machine.
    const std::size_t threads = std::max<std::size_t>(8, 2 * std::thread::hardware_concurrency());
    auto pool = std::make_shared<boost::asio::thread_pool>(threads);
    current = pool;
    return pool;
}

}  // namespace qed::detail
