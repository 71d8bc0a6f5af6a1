# meshd on every Nomad client: a system job, one allocation per eligible node.
#
# Before `nomad job run` (nomad/README.md has the details):
#   - each client has /usr/bin/meshd (the Debian package), the `meshd` user, a host volume
#     "meshd-data", the exec driver, and `consul { address = "127.0.0.1:8500" }`;
#   - the Nomad variable nomad/jobs/meshd holds `join_token` and `ca_pem` (the mesh CA
#     certificate): meshd cannot start without it.
#
#   nomad job run -var 'servers=["10.0.0.1:8301","10.0.0.2:8301","10.0.0.3:8301"]' \
#     nomad/meshd.nomad.hcl
#
# meshd registers its own service with Nomad (provider = "nomad"): it cannot register with
# itself before it runs. Applications' services register with meshd through Nomad's Consul
# integration (see example-app.nomad.hcl).

variable "servers" {
  description = "The meshd servers to join, IP:PORT (QUIC, UDP 8301)."
  type        = list(string)
  default     = ["10.0.0.1:8301", "10.0.0.2:8301", "10.0.0.3:8301"]
}

variable "datacenter" {
  description = "meshd's datacenter: the servers' `datacenter` (not Nomad's)."
  type        = string
  default     = "dc1"
}

# Allocations keep the /usr/bin/meshd they started with (the exec driver's chroot): changing
# this value replaces them, one node at a time, so that they run the newly installed binary.
variable "meshd_version" {
  description = "The meshd package version installed on the clients."
  type        = string
  default     = "0.1.0"
}

job "meshd" {
  type        = "system"
  datacenters = ["*"]
  # Placed before ordinary jobs (priority 50); on a full node the system scheduler may
  # preempt lower-priority allocations to make room for it.
  priority = 90

  meta {
    meshd_version = var.meshd_version
  }

  # One node at a time: each old allocation gets SIGTERM and drains before the new one starts.
  update {
    max_parallel = 1
    stagger      = "30s"
  }

  group "meshd" {
    # meshd serves on the host's network: the HTTP API and DNS on loopback, QUIC on the node's
    # address. The static ports reserve the numbers on the node so that no other job takes them.
    network {
      mode = "host"

      port "http" {
        static = 8500 # HTTP API (TCP), 127.0.0.1 only: Nomad's consul block points here
      }
      port "dns" {
        static = 8600 # DNS, UDP and TCP, 127.0.0.1 only
      }
      port "quic" {
        static = 8301 # QUIC (UDP): Raft, agent RPC, mesh tunnels between hosts
      }
    }

    # The data dir: the node's enrolled certificate and identity and the registry view survive
    # restarts and new allocations.
    volume "data" {
      type      = "host"
      source    = "meshd-data"
      read_only = false
    }

    # Keep trying: a node without meshd has no service registration, DNS or mesh.
    restart {
      attempts = 10
      interval = "5m"
      delay    = "10s"
      mode     = "delay"
    }

    service {
      provider = "nomad"
      name     = "meshd"
      port     = "http"
      # The API listens on 127.0.0.1 only; the check inherits this address.
      address = "127.0.0.1"
      tags    = ["agent"]

      check {
        name     = "meshd-http"
        type     = "http"
        path     = "/v1/agent/self"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "meshd" {
      # exec, not raw_exec: raw_exec cannot mount host volumes. The exec driver refuses to run
      # tasks as root by default; the Debian package creates the meshd user.
      driver = "exec"
      user   = "meshd"

      config {
        command = "/usr/bin/meshd"
        # The configuration holds the join token, so it lives in the secrets dir (not readable
        # with `nomad alloc fs`). services.d takes Consul JSON definitions of services Nomad
        # does not run (add a template per file); SIGHUP reloads them.
        args = [
          "agent",
          "--config", "${NOMAD_SECRETS_DIR}/meshd.toml",
          "--config-dir", "${NOMAD_TASK_DIR}/services.d",
        ]
      }

      volume_mount {
        volume      = "data"
        destination = "/var/lib/meshd"
        read_only   = false
      }

      # meshd's configuration (meshd/src/config.rs lists the keys). A change (a job update, a
      # new item in the variable) is written to the file and meshd is sent SIGHUP: it applies
      # what can change at run time (log_level, drain_timeout, leave_on_terminate, services.d)
      # and logs the other changed keys as taking effect at the next start (join_token among
      # them: a node uses it only to enroll, the first time).
      template {
        # Rendered as the Nomad agent's user with the default perms (0644), so that the meshd
        # user can read it; secrets/ itself is out of reach of `nomad alloc fs`.
        destination          = "secrets/meshd.toml"
        change_mode          = "signal"
        change_signal        = "SIGHUP"
        error_on_missing_key = true # a variable without join_token fails the task, loudly
        data                 = <<-EOT
          # Rendered by Nomad from nomad/meshd.nomad.hcl; edits are overwritten.
          node_name      = "{{ env "node.unique.name" }}"
          datacenter     = "${var.datacenter}"
          data_dir       = "/var/lib/meshd"
          http_addr      = "127.0.0.1:{{ env "NOMAD_PORT_http" }}"
          dns_addr       = "127.0.0.1:{{ env "NOMAD_PORT_dns" }}"
          bind_addr      = "{{ env "attr.unique.network.ip-address" }}:{{ env "NOMAD_PORT_quic" }}"
          advertise_addr = "{{ env "attr.unique.network.ip-address" }}"
          retry_join     = ${jsonencode(var.servers)}
          ca_file        = "{{ env "NOMAD_TASK_DIR" }}/mesh-agent-ca.pem"
          {{ with nomadVar "nomad/jobs/meshd" }}
          join_token     = "{{ .join_token }}"
          {{ end }}
          log_level      = "info"
          node_meta      = { nomad_node_id = "{{ env "node.unique.id" }}" }
          # SIGTERM: stop accepting, let open requests and proxied connections finish for up
          # to drain_timeout, then exit; kill_timeout (30s) leaves room before SIGKILL.
          drain_timeout  = "15s"
          # A restart (upgrade, new allocation) keeps this node and the services Nomad
          # registered in the catalog; the node is marked failed if it stays down longer than
          # liveness_timeout. To remove a node for good, see nomad/README.md.
          leave_on_terminate = false
        EOT
      }

      # The mesh CA certificate every host checks the servers against. An agent reads it when
      # it starts: after a change, restart the allocations one by one (nomad/README.md).
      template {
        destination          = "local/mesh-agent-ca.pem"
        change_mode          = "signal"
        change_signal        = "SIGHUP"
        error_on_missing_key = true
        data                 = <<-EOT
          {{ with nomadVar "nomad/jobs/meshd" }}{{ .ca_pem }}{{ end }}
        EOT
      }

      # Creates the --config-dir directory (only *.json files there are read).
      template {
        destination = "local/services.d/README"
        change_mode = "noop"
        data        = <<-EOT
          Consul JSON service definitions of this host's services that Nomad does not run, one
          *.json file each; add a template block with change_mode = "signal" and
          change_signal = "SIGHUP" to nomad/meshd.nomad.hcl for each.
        EOT
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 200 # MHz
        memory = 256 # MiB: the registry cache is 64 MiB (cache_mb)
      }
    }
  }
}
