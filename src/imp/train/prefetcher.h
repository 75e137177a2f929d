// Background batch preparation: worker threads keep a few batches of every
// task ready, so the step loop rarely waits on data.
#pragma once

#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "imp/data/batch.h"
#include "imp/tasks/task.h"

namespace imp {

class BatchPrefetcher {
 public:
  // Keeps up to `depth` batches per task built or in progress, using
  // `workers` threads. Tasks must outlive the prefetcher. Task t's batches
  // start at index first_batch[t] (0 when not given), so a resumed run goes
  // on with the batch after the last one trained on.
  BatchPrefetcher(std::vector<const Task*> tasks, int workers, int depth,
                  std::vector<int64_t> first_batch = {});
  ~BatchPrefetcher();
  BatchPrefetcher(const BatchPrefetcher&) = delete;
  BatchPrefetcher& operator=(const BatchPrefetcher&) = delete;

  // The next batch of `task`, in batch-index order; blocks until it is ready.
  // Adds the seconds spent blocked to *waited when given. Rethrows an error
  // that a worker hit while building a batch.
  Batch next(size_t task, double* waited = nullptr);

 private:
  struct TaskQueue {
    int64_t next_to_build = 0;
    int64_t next_to_serve = 0;
    int in_flight = 0;
    std::map<int64_t, Batch> ready;  // batch index -> batch
  };

  void work();
  // Index of the task with the fewest batches ready or in flight, if any has
  // fewer than depth_; -1 otherwise. Call with mutex_ held.
  int pick_task_locked() const;

  std::vector<const Task*> tasks_;
  int depth_;
  std::vector<TaskQueue> queues_;
  std::mutex mutex_;
  std::condition_variable work_available_;
  std::condition_variable batch_ready_;
  bool stopping_ = false;
  std::exception_ptr error_;
  std::vector<std::thread> workers_;
};

}  // namespace imp
