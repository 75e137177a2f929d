// Launch detection from environment variables (see environment.h).
#include "imp/dist/environment.h"

#include <charconv>
#include <cstdlib>
#include <limits>
#include <system_error>

#include "imp/core/error.h"

extern char** environ;

namespace imp::dist {

namespace {

const std::string* find_variable(const EnvironmentMap& variables, const std::string& name) {
  auto found = variables.find(name);
  return found == variables.end() ? nullptr : &found->second;
}

// Parses the whole value as a base-10 integer. Leading spaces, a '+' sign and
// trailing characters are rejected, so "4 " or "4x" never count as 4.
int64_t parse_integer(const std::string& name, const std::string& value, const std::string& advice) {
  int64_t parsed = 0;
  const char* begin = value.data();
  const char* end = value.data() + value.size();
  auto [stop, error] = std::from_chars(begin, end, parsed);
  IMP_REQUIRE(ConfigError, !value.empty() && error == std::errc() && stop == end,
              "environment variable ", name, "='", value, "' is not an integer; ", advice);
  return parsed;
}

int64_t require_integer(const EnvironmentMap& variables, const std::string& name,
                        const std::string& advice) {
  const std::string* value = find_variable(variables, name);
  IMP_REQUIRE(ConfigError, value != nullptr, "environment variable ", name, " is not set; ", advice);
  return parse_integer(name, *value, advice);
}

std::optional<int64_t> optional_integer(const EnvironmentMap& variables, const std::string& name,
                                        const std::string& advice) {
  const std::string* value = find_variable(variables, name);
  if (value == nullptr) return std::nullopt;
  return parse_integer(name, *value, advice);
}

int check_world_size(const std::string& name, int64_t world_size) {
  IMP_REQUIRE(ConfigError, world_size >= 1 && world_size <= std::numeric_limits<int>::max(),
              "environment variable ", name, "='", world_size,
              "' is invalid: the number of processes must be at least 1");
  return static_cast<int>(world_size);
}

int check_rank(const std::string& name, int64_t rank, int world_size, const std::string& size_name) {
  IMP_REQUIRE(ConfigError, rank >= 0 && rank < world_size, "environment variable ", name, "='",
              rank, "' is out of range: a rank must be in [0, ", world_size, ") because ",
              size_name, "=", world_size, "; check the launcher's settings");
  return static_cast<int>(rank);
}

int check_local_rank(const std::string& name, int64_t local_rank, std::optional<int> local_world_size) {
  IMP_REQUIRE(ConfigError, local_rank >= 0 && local_rank <= std::numeric_limits<int>::max(),
              "environment variable ", name, "='", local_rank,
              "' is invalid: a local rank must be 0 or more");
  if (local_world_size.has_value()) {
    IMP_REQUIRE(ConfigError, local_rank < *local_world_size, "environment variable ", name, "='",
                local_rank, "' is out of range: it must be less than the ", *local_world_size,
                " processes on this node; check the launcher's settings");
  }
  return static_cast<int>(local_rank);
}

int check_port(const std::string& name, int64_t port) {
  IMP_REQUIRE(ConfigError, port >= 1 && port <= 65535, "environment variable ", name, "='", port,
              "' is out of range: a TCP port must be in 1..65535");
  return static_cast<int>(port);
}

const char* const kMasterAddrAdvice =
    "set MASTER_ADDR to the host name or IP address of the node that runs rank 0";
const char* const kMasterPortAdvice =
    "set MASTER_PORT to a free TCP port (1..65535) on the node that runs rank 0";

std::string require_master_addr(const EnvironmentMap& variables, const std::string& launcher_hint) {
  const std::string* addr = find_variable(variables, "MASTER_ADDR");
  IMP_REQUIRE(ConfigError, addr != nullptr, "environment variable MASTER_ADDR is not set",
              launcher_hint, "; ", kMasterAddrAdvice);
  IMP_REQUIRE(ConfigError, !addr->empty(), "environment variable MASTER_ADDR is empty; ",
              kMasterAddrAdvice);
  return *addr;
}

int require_master_port(const EnvironmentMap& variables, const std::string& launcher_hint) {
  const std::string* port = find_variable(variables, "MASTER_PORT");
  IMP_REQUIRE(ConfigError, port != nullptr, "environment variable MASTER_PORT is not set",
              launcher_hint, "; ", kMasterPortAdvice);
  return check_port("MASTER_PORT", parse_integer("MASTER_PORT", *port, kMasterPortAdvice));
}

// A job of one process needs no peers, so its store may bind any free port on
// the loopback address when MASTER_ADDR / MASTER_PORT are absent.
void fill_master_for_single_process(const EnvironmentMap& variables, LaunchEnvironment& env) {
  if (find_variable(variables, "MASTER_ADDR") != nullptr) env.master_addr = require_master_addr(variables, "");
  if (find_variable(variables, "MASTER_PORT") != nullptr) env.master_port = require_master_port(variables, "");
}

// Reads the number of processes and this process's rank from a launcher's
// two variables, with the advice each error gives when one is missing.
void read_world_and_rank(const EnvironmentMap& variables, const std::string& size_name,
                         const std::string& size_advice, const std::string& rank_name,
                         const std::string& rank_advice, LaunchEnvironment& env) {
  env.world_size = check_world_size(size_name, require_integer(variables, size_name, size_advice));
  env.rank = check_rank(rank_name, require_integer(variables, rank_name, rank_advice), env.world_size,
                        size_name);
}

LaunchEnvironment detect_torchrun(const EnvironmentMap& variables) {
  LaunchEnvironment env;
  env.launcher = Launcher::kTorchrun;
  const std::string pair_advice =
      "RANK and WORLD_SIZE must be set together (torchrun sets both); set the missing one or "
      "unset the other";
  IMP_REQUIRE(ConfigError, find_variable(variables, "WORLD_SIZE") != nullptr,
              "environment variable RANK is set but WORLD_SIZE is not; ", pair_advice);
  IMP_REQUIRE(ConfigError, find_variable(variables, "RANK") != nullptr,
              "environment variable WORLD_SIZE is set but RANK is not; ", pair_advice);

  read_world_and_rank(variables, "WORLD_SIZE", "set it to the number of processes", "RANK",
                      "set it to this process's index", env);

  if (auto local_size = optional_integer(variables, "LOCAL_WORLD_SIZE",
                                         "set it to the number of processes on this node")) {
    env.local_world_size = check_world_size("LOCAL_WORLD_SIZE", *local_size);
  }
  // NOTE: without LOCAL_RANK (torchrun always sets it) the global rank is
  // used, which is right only when every process runs on one node.
  auto local_rank = optional_integer(variables, "LOCAL_RANK",
                                     "set it to this process's index on its node");
  env.local_rank = check_local_rank("LOCAL_RANK", local_rank.value_or(env.rank), env.local_world_size);

  if (env.world_size == 1) {
    fill_master_for_single_process(variables, env);
  } else {
    env.master_addr = require_master_addr(variables, " (torchrun sets it)");
    env.master_port = require_master_port(variables, " (torchrun sets it)");
  }
  return env;
}

LaunchEnvironment detect_slurm(const EnvironmentMap& variables) {
  LaunchEnvironment env;
  env.launcher = Launcher::kSlurm;
  const std::string srun_advice = "launch the job with srun, which sets it";
  read_world_and_rank(variables, "SLURM_NTASKS", srun_advice, "SLURM_PROCID", srun_advice, env);
  // SLURM_NTASKS_PER_NODE is a plain number only when every node runs the
  // same count; forms such as "2(x3),1" leave the local world size unknown.
  if (const std::string* per_node = find_variable(variables, "SLURM_NTASKS_PER_NODE")) {
    int64_t count = 0;
    auto [stop, error] = std::from_chars(per_node->data(), per_node->data() + per_node->size(), count);
    if (error == std::errc() && stop == per_node->data() + per_node->size() && count >= 1 &&
        count <= std::numeric_limits<int>::max()) {
      env.local_world_size = static_cast<int>(count);
    }
  }
  auto local_rank = optional_integer(variables, "SLURM_LOCALID", srun_advice);
  env.local_rank = check_local_rank("SLURM_LOCALID", local_rank.value_or(0), env.local_world_size);

  if (find_variable(variables, "MASTER_ADDR") != nullptr) {
    env.master_addr = require_master_addr(variables, "");
  } else {
    const std::string* nodelist = find_variable(variables, "SLURM_JOB_NODELIST");
    std::string nodelist_name = "SLURM_JOB_NODELIST";
    if (nodelist == nullptr) {
      nodelist = find_variable(variables, "SLURM_NODELIST");
      nodelist_name = "SLURM_NODELIST";
    }
    IMP_REQUIRE(ConfigError, nodelist != nullptr,
                "neither MASTER_ADDR nor SLURM_JOB_NODELIST / SLURM_NODELIST is set under Slurm; ",
                kMasterAddrAdvice);
    env.master_addr = first_host_in_slurm_nodelist(*nodelist, nodelist_name);
  }

  if (find_variable(variables, "MASTER_PORT") != nullptr) {
    env.master_port = require_master_port(variables, "");
  } else {
    const std::string* job_id = find_variable(variables, "SLURM_JOB_ID");
    IMP_REQUIRE(ConfigError, job_id != nullptr,
                "neither MASTER_PORT nor SLURM_JOB_ID is set under Slurm, so no rendezvous port "
                "can be derived; ",
                kMasterPortAdvice);
    int64_t id = parse_integer("SLURM_JOB_ID", *job_id, std::string("or ") + kMasterPortAdvice);
    IMP_REQUIRE(ConfigError, id >= 0, "environment variable SLURM_JOB_ID='", *job_id,
                "' is negative; ", kMasterPortAdvice);
    env.master_port = kSlurmBasePort + static_cast<int>(id % kSlurmPortRange);
  }
  return env;
}

LaunchEnvironment detect_open_mpi(const EnvironmentMap& variables) {
  LaunchEnvironment env;
  env.launcher = Launcher::kOpenMpi;
  const std::string mpirun_advice = "launch the job with mpirun, which sets it";
  read_world_and_rank(variables, "OMPI_COMM_WORLD_SIZE", mpirun_advice, "OMPI_COMM_WORLD_RANK",
                      mpirun_advice, env);
  if (auto local_size = optional_integer(variables, "OMPI_COMM_WORLD_LOCAL_SIZE", mpirun_advice)) {
    env.local_world_size = check_world_size("OMPI_COMM_WORLD_LOCAL_SIZE", *local_size);
  }
  auto local_rank = optional_integer(variables, "OMPI_COMM_WORLD_LOCAL_RANK", mpirun_advice);
  env.local_rank = check_local_rank("OMPI_COMM_WORLD_LOCAL_RANK", local_rank.value_or(0),
                                    env.local_world_size);

  if (env.world_size == 1) {
    fill_master_for_single_process(variables, env);
  } else {
    // mpirun does not choose a rendezvous address, so the user must.
    const std::string hint = " (mpirun does not set it; pass it with mpirun -x MASTER_ADDR=...)";
    env.master_addr = require_master_addr(variables, hint);
    env.master_port = require_master_port(
        variables, " (mpirun does not set it; pass it with mpirun -x MASTER_PORT=...)");
  }
  return env;
}

// Returns the first element of a bracketed host range body such as
// "01-04,07" (01). Zero padding is kept because Slurm host names keep it.
std::string first_range_start(const std::string& body, const std::string& nodelist,
                              const std::string& variable_name) {
  std::string first = body.substr(0, body.find_first_of(",-"));
  bool digits_only = !first.empty() && first.find_first_not_of("0123456789") == std::string::npos;
  IMP_REQUIRE(ConfigError, digits_only, "environment variable ", variable_name, "='", nodelist,
              "' has an invalid host range [", body,
              "]; expected numbers such as [01-04,07]. Set MASTER_ADDR to the host of rank 0 instead");
  return first;
}

}  // namespace

const char* launcher_name(Launcher launcher) {
  switch (launcher) {
    case Launcher::kSingleProcess:
      return "single process";
    case Launcher::kTorchrun:
      return "torchrun";
    case Launcher::kSlurm:
      return "slurm";
    case Launcher::kOpenMpi:
      return "openmpi";
  }
  return "unknown";
}

std::string LaunchEnvironment::describe() const {
  std::string text = str_cat(launcher_name(launcher), ": rank ", rank, " of ", world_size,
                             " (local rank ", local_rank);
  if (local_world_size.has_value()) text += str_cat(" of ", *local_world_size);
  text += str_cat("), rendezvous at ", master_addr, ":");
  text += master_port == 0 ? std::string("any free port") : std::to_string(master_port);
  return text;
}

std::string first_host_in_slurm_nodelist(const std::string& nodelist, const std::string& variable_name) {
  IMP_REQUIRE(ConfigError, !nodelist.empty(), "environment variable ", variable_name,
              " is empty; set MASTER_ADDR to the host of rank 0");

  // Walk the list once: inside brackets, commas separate ranges; outside,
  // they separate hosts. The first host ends at the first top-level comma.
  std::string first_host;
  bool first_host_done = false;
  size_t bracket_open = std::string::npos;
  for (size_t i = 0; i < nodelist.size(); ++i) {
    char c = nodelist[i];
    if (c == '[') {
      IMP_REQUIRE(ConfigError, bracket_open == std::string::npos, "environment variable ",
                  variable_name, "='", nodelist, "' has nested '[' at position ", i,
                  "; set MASTER_ADDR to the host of rank 0 instead");
      bracket_open = i;
    } else if (c == ']') {
      IMP_REQUIRE(ConfigError, bracket_open != std::string::npos, "environment variable ",
                  variable_name, "='", nodelist, "' has ']' without '[' at position ", i,
                  "; set MASTER_ADDR to the host of rank 0 instead");
      if (!first_host_done) {
        first_host += first_range_start(nodelist.substr(bracket_open + 1, i - bracket_open - 1),
                                        nodelist, variable_name);
      }
      bracket_open = std::string::npos;
    } else if (bracket_open == std::string::npos) {
      if (c == ',') {
        first_host_done = true;
      } else if (!first_host_done) {
        first_host += c;
      }
    }
  }
  IMP_REQUIRE(ConfigError, bracket_open == std::string::npos, "environment variable ", variable_name,
              "='", nodelist, "' has '[' without ']'; set MASTER_ADDR to the host of rank 0 instead");
  IMP_REQUIRE(ConfigError, !first_host.empty(), "environment variable ", variable_name, "='",
              nodelist, "' starts with an empty host name; set MASTER_ADDR to the host of rank 0 instead");
  return first_host;
}

LaunchEnvironment detect_launch_environment(const EnvironmentMap& variables) {
  auto has = [&](const char* name) { return find_variable(variables, name) != nullptr; };
  if (has("RANK") || has("WORLD_SIZE")) return detect_torchrun(variables);
  // NOTE: a batch script run by sbatch without srun also has SLURM_PROCID=0
  // and SLURM_NTASKS; started there directly, rank 0 waits for peers that
  // never come until the rendezvous timeout. Start each rank with srun.
  if (has("SLURM_PROCID") && has("SLURM_NTASKS")) return detect_slurm(variables);
  if (has("OMPI_COMM_WORLD_RANK") || has("OMPI_COMM_WORLD_SIZE")) return detect_open_mpi(variables);

  LaunchEnvironment env;
  fill_master_for_single_process(variables, env);
  return env;
}

LaunchEnvironment detect_launch_environment() {
  EnvironmentMap variables;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    std::string text(*entry);
    size_t equals = text.find('=');
    if (equals == std::string::npos) continue;
    variables.emplace(text.substr(0, equals), text.substr(equals + 1));
  }
  return detect_launch_environment(variables);
}

}  // namespace imp::dist
