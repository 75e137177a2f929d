// Detection of a multi-process launch: which launcher started this process
// (torchrun, Slurm's srun, Open MPI's mpirun or none), this process's rank,
// the number of processes and the address of the rendezvous store that rank 0
// hosts. Detection reads a map of variables, so tests need not touch the real
// environment; detect_launch_environment() reads the process environment.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace imp::dist {

// The launcher whose variables described the job.
enum class Launcher {
  kSingleProcess,  // no launcher variables: rank 0 of 1
  kTorchrun,       // RANK / WORLD_SIZE, as set by torchrun or by hand
  kSlurm,          // SLURM_PROCID / SLURM_NTASKS, as set by srun
  kOpenMpi,        // OMPI_COMM_WORLD_RANK / OMPI_COMM_WORLD_SIZE, as set by mpirun
};

// Returns "single process", "torchrun", "slurm" or "openmpi".
const char* launcher_name(Launcher launcher);

// The default rendezvous port under Slurm when MASTER_PORT is unset:
// 20000 + SLURM_JOB_ID % 20000, so that concurrent jobs sharing a node
// usually get different ports (two job ids 20000 apart still collide).
constexpr int kSlurmBasePort = 20000;
constexpr int kSlurmPortRange = 20000;

struct LaunchEnvironment {
  Launcher launcher = Launcher::kSingleProcess;
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  // index of this process among those on its node
  // Processes on this node, when the launcher states it.
  std::optional<int> local_world_size;
  std::string master_addr = "127.0.0.1";
  // Port of rank 0's rendezvous store. 0 only for a single process without
  // MASTER_PORT, where the store binds any free port.
  int master_port = 0;

  // One line for the log, such as
  // "slurm: rank 3 of 8 (local rank 1), rendezvous at node01:29500".
  std::string describe() const;
};

using EnvironmentMap = std::map<std::string, std::string>;

// Detects the launch from `variables`. Precedence: RANK / WORLD_SIZE first,
// then Slurm, then Open MPI, else a single process. Throws imp::ConfigError
// naming the variable and its value when a value is missing, not a complete
// integer or out of range.
LaunchEnvironment detect_launch_environment(const EnvironmentMap& variables);

// Detects the launch from the process environment (getenv).
LaunchEnvironment detect_launch_environment();

// Returns the first host of a Slurm node list such as "node[01-04,07]"
// (node01), "a,b" (a), "gpu-[1-2]" (gpu-1) or "rack[1-2]-n[3-4]" (rack1-n3).
// Only the first host is derived; later entries are checked for balanced
// brackets but not expanded. Throws imp::ConfigError naming `variable_name`
// when the list is empty or its brackets are malformed.
std::string first_host_in_slurm_nodelist(const std::string& nodelist,
                                         const std::string& variable_name);

}  // namespace imp::dist
