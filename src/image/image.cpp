// SPDX-License-Identifier: BSL-1.0
// The public image handle and the non-template entry points behind it.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/system_executor.hpp>

#include "block_file/blocking_pool.hpp"
#include "image/backing.hpp"
#include "image/device.hpp"
#include "table/co_io.hpp"

namespace qed {

std::string_view to_string(image_format f) noexcept {
    return f == image_format::qed ? "qed" : "raw";
}

std::optional<image_format> parse_format(std::string_view name) noexcept {
    if (name == "qed") return image_format::qed;
    if (name == "raw") return image_format::raw;
    return std::nullopt;
}

bool image::is_open() const noexcept {
    return dev_ && dev_->is_open();
}

image::executor_type image::get_executor() const {
    if (!dev_) throw std::system_error(make_error_code(errc::closed));
    return dev_->get_executor();
}

std::uint64_t image::size() const {
    return dev_ ? dev_->size() : 0;
}

image_info image::info() const {
    return dev_ ? dev_->info() : image_info{};
}

image image::backing() const {
    return image(dev_ ? dev_->backing() : nullptr);
}

namespace detail {

// ---- defaults for formats without the operation ---------------------------

// (Closed first: an operation on a closed image always says so.)
void device::check(check_options, check_handler handler) {
    complete_later(std::move(handler), make_error_code(is_open() ? errc::not_supported : errc::closed), check_result{});
}
void device::change_backing_file(std::string, std::optional<image_format>, op_handler handler) {
    complete_later(std::move(handler), make_error_code(is_open() ? errc::not_supported : errc::closed));
}
void device::make_empty(op_handler handler) {
    complete_later(std::move(handler), make_error_code(is_open() ? errc::not_supported : errc::closed));
}

// ---- entry points -----------------------------------------------------------

namespace {

/// A handle without an image: fail on the handler's own executor, never
/// inside the initiating call. The hop goes through the system executor
/// (there is no image executor to use); hand_over() keeps the handler's
/// io_context busy until the handler ran and lets go of it safely (test_api
/// crashed when Asio's post() released it from the system thread later).
template <class Handler, class... Args>
void fail_no_image(Handler h, Args... args) {
    namespace execution = boost::asio::execution;
    auto work = boost::asio::prefer(boost::asio::get_associated_executor(h), execution::outstanding_work.tracked);
    boost::asio::post(boost::asio::system_executor(), [work = std::move(work), h = std::move(h), args...]() mutable {
        const auto target = boost::asio::prefer(work, execution::outstanding_work.untracked);
        hand_over(target, std::move(work), [h = std::move(h), args...]() mutable {
            std::move(h)(make_error_code(errc::closed), std::move(args)...);
        });
    });
}

void deliver_open(const boost::asio::any_io_executor& ex, open_handler h, std::error_code ec,
                  std::shared_ptr<device> dev) {
    boost::asio::dispatch(ex, boost::asio::append(std::move(h), ec, image(ec ? nullptr : std::move(dev))));
}

template <class Task>
void spawn_open(const boost::asio::any_io_executor& ex, Task task, open_handler handler) {
    boost::asio::co_spawn(ex, std::move(task),
                          [ex, h = std::move(handler)](std::exception_ptr e, device_result r) mutable {
                              if (e) r = {std::make_error_code(std::errc::not_enough_memory), nullptr};
                              deliver_open(ex, std::move(h), r.first, std::move(r.second));
                          });
}

}  // namespace

void initiate_open(const boost::asio::any_io_executor& ex, std::string path, open_options options,
                   open_handler handler) {
    auto fmt = options.format;
    spawn_open(ex, open_device(ex, std::move(path), fmt, std::move(options), 0, {}), std::move(handler));
}

void initiate_open_file(std::shared_ptr<block_file> file, std::string name, open_options options,
                        open_handler handler) {
    if (!file) return fail_no_image(std::move(handler), image{});
    auto ex = file->get_executor();
    auto fmt = options.format;
    if (!options.opener) options.opener = default_opener(ex);
    spawn_open(ex, open_on_file(ex, std::move(file), std::move(name), fmt, std::move(options), 0, {}),
               std::move(handler));
}

// Requests dispatch onto the image's executor: inline when already there
// (the common case), queued otherwise. Devices never complete inline.
void initiate_read(const std::shared_ptr<device>& dev, std::uint64_t offset, mutable_buffers buffers,
                   io_handler handler) {
    if (!dev) return fail_no_image(std::move(handler), std::size_t{0});
    boost::asio::dispatch(dev->get_executor(), [dev, offset, b = std::move(buffers), h = std::move(handler)]() mutable {
        dev->read(offset, std::move(b), std::move(h));
    });
}

void initiate_write(const std::shared_ptr<device>& dev, std::uint64_t offset, const_buffers buffers,
                    write_options options, io_handler handler) {
    if (!dev) return fail_no_image(std::move(handler), std::size_t{0});
    boost::asio::dispatch(dev->get_executor(),
                          [dev, offset, b = std::move(buffers), options, h = std::move(handler)]() mutable {
                              dev->write(offset, std::move(b), options, std::move(h));
                          });
}

void initiate_write_zeroes(const std::shared_ptr<device>& dev, std::uint64_t offset, std::uint64_t length,
                           zero_options options, op_handler handler) {
    if (!dev) return fail_no_image(std::move(handler));
    boost::asio::dispatch(dev->get_executor(), [dev, offset, length, options, h = std::move(handler)]() mutable {
        dev->write_zeroes(offset, length, options, std::move(h));
    });
}

void initiate_discard(const std::shared_ptr<device>& dev, std::uint64_t offset, std::uint64_t length,
                      op_handler handler) {
    if (!dev) return fail_no_image(std::move(handler));
    boost::asio::dispatch(dev->get_executor(), [dev, offset, length, h = std::move(handler)]() mutable {
        dev->discard(offset, length, std::move(h));
    });
}

void initiate_flush(const std::shared_ptr<device>& dev, op_handler handler) {
    if (!dev) return fail_no_image(std::move(handler));
    boost::asio::dispatch(dev->get_executor(), [dev, h = std::move(handler)]() mutable { dev->flush(std::move(h)); });
}

void initiate_block_status(const std::shared_ptr<device>& dev, std::uint64_t offset, std::uint64_t length,
                           status_handler handler) {
    if (!dev) return fail_no_image(std::move(handler), std::vector<extent>{});
    boost::asio::dispatch(dev->get_executor(), [dev, offset, length, h = std::move(handler)]() mutable {
        dev->block_status(offset, length, 0, std::move(h));
    });
}

void initiate_check(const std::shared_ptr<device>& dev, check_options options, check_handler handler) {
    if (!dev) return fail_no_image(std::move(handler), check_result{});
    boost::asio::dispatch(dev->get_executor(),
                          [dev, options, h = std::move(handler)]() mutable { dev->check(options, std::move(h)); });
}

void initiate_change_backing_file(const std::shared_ptr<device>& dev, std::string name,
                                  std::optional<image_format> format, op_handler handler) {
    if (!dev) return fail_no_image(std::move(handler));
    boost::asio::dispatch(dev->get_executor(), [dev, n = std::move(name), format, h = std::move(handler)]() mutable {
        dev->change_backing_file(std::move(n), format, std::move(h));
    });
}

void initiate_grow(const std::shared_ptr<device>& dev, std::uint64_t new_size, op_handler handler) {
    if (!dev) return fail_no_image(std::move(handler));
    boost::asio::dispatch(dev->get_executor(),
                          [dev, new_size, h = std::move(handler)]() mutable { dev->grow(new_size, std::move(h)); });
}

void initiate_make_empty(const std::shared_ptr<device>& dev, op_handler handler) {
    if (!dev) return fail_no_image(std::move(handler));
    boost::asio::dispatch(dev->get_executor(),
                          [dev, h = std::move(handler)]() mutable { dev->make_empty(std::move(h)); });
}

void initiate_close(const std::shared_ptr<device>& dev, op_handler handler) {
    if (!dev) return fail_no_image(std::move(handler));
    boost::asio::dispatch(dev->get_executor(), [dev, h = std::move(handler)]() mutable { dev->close(std::move(h)); });
}

}  // namespace detail
}  // namespace qed
