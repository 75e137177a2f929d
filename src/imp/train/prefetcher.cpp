#include "imp/train/prefetcher.h"

#include <chrono>

namespace imp {

BatchPrefetcher::BatchPrefetcher(std::vector<const Task*> tasks, int workers, int depth,
                                 std::vector<int64_t> first_batch)
    : tasks_(std::move(tasks)), depth_(std::max(1, depth)), queues_(tasks_.size()) {
  for (size_t t = 0; t < first_batch.size() && t < queues_.size(); ++t) {
    queues_[t].next_to_build = first_batch[t];
    queues_[t].next_to_serve = first_batch[t];
  }
  for (int i = 0; i < std::max(1, workers); ++i) workers_.emplace_back([this] { work(); });
}

BatchPrefetcher::~BatchPrefetcher() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_available_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

int BatchPrefetcher::pick_task_locked() const {
  int best = -1;
  size_t best_pending = static_cast<size_t>(depth_);
  for (size_t t = 0; t < queues_.size(); ++t) {
    const size_t pending = queues_[t].ready.size() + queues_[t].in_flight;
    if (pending < best_pending) {
      best = static_cast<int>(t);
      best_pending = pending;
    }
  }
  return best;
}

void BatchPrefetcher::work() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    int task = -1;
    work_available_.wait(lock, [&] {
      task = pick_task_locked();
      return stopping_ || error_ != nullptr || task >= 0;
    });
    if (stopping_ || error_ != nullptr) return;

    TaskQueue& queue = queues_[task];
    const int64_t index = queue.next_to_build++;
    ++queue.in_flight;
    lock.unlock();

    Batch batch;
    std::exception_ptr failure;
    try {
      batch = tasks_[task]->make_batch(index);
    } catch (...) {
      failure = std::current_exception();
    }

    lock.lock();
    --queue.in_flight;
    if (failure) {
      error_ = failure;
    } else {
      queue.ready.emplace(index, std::move(batch));
    }
    batch_ready_.notify_all();
  }
}

Batch BatchPrefetcher::next(size_t task, double* waited) {
  const auto start = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mutex_);
  TaskQueue& queue = queues_.at(task);
  batch_ready_.wait(lock, [&] {
    return error_ != nullptr || queue.ready.count(queue.next_to_serve) > 0;
  });
  if (error_ != nullptr) std::rethrow_exception(error_);

  auto found = queue.ready.find(queue.next_to_serve++);
  Batch batch = std::move(found->second);
  queue.ready.erase(found);
  lock.unlock();
  work_available_.notify_one();

  if (waited != nullptr) {
    *waited += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  return batch;
}

}  // namespace imp
