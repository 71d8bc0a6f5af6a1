# An application whose service registers with meshd through Nomad's Consul integration.
#
# The Nomad client's `consul { address = "127.0.0.1:8500" }` points at the local meshd, which
# answers Consul's agent API: Nomad registers each instance with PUT
# /v1/agent/service/register (tags, meta, address and port) and its check with PUT
# /v1/agent/check/register; meshd runs the HTTP check and the instance shows in the catalog,
# in DNS (web.service.mesh) and behind the service's virtual IP (web.virtual.mesh) on every
# host.
#
# The server is Python's http.server run by the exec driver (python3 from the host's /usr):
# no image to pull, nothing to install beyond python3.
#
#   nomad job run nomad/example-app.nomad.hcl
#   meshctl health web
#   dig @127.0.0.1 -p 8600 web.service.mesh

job "web" {
  type        = "service"
  datacenters = ["*"]

  update {
    max_parallel     = 1
    health_check     = "checks" # the check as meshd reports it on /v1/agent/checks
    min_healthy_time = "10s"
    healthy_deadline = "2m"
    auto_revert      = true
  }

  group "web" {
    count = 2

    network {
      port "http" {} # a dynamic port on the node's address
    }

    service {
      provider = "consul"
      name     = "web"
      port     = "http"
      tags     = ["http", "v1"]

      meta {
        version  = "1.0.0"
        alloc_id = "${NOMAD_ALLOC_ID}"
      }

      check {
        name     = "web-http"
        type     = "http"
        path     = "/"
        interval = "10s"
        timeout  = "2s"

        # Restart the task when meshd reports the check critical three times in a row.
        check_restart {
          limit = 3
          grace = "10s"
        }
      }
    }

    task "server" {
      driver = "exec"

      config {
        command = "/usr/bin/python3"
        args = [
          "-m", "http.server", "${NOMAD_PORT_http}",
          "--bind", "${NOMAD_IP_http}",
          "--directory", "${NOMAD_TASK_DIR}",
        ]
      }

      template {
        destination = "local/index.html"
        data        = <<-EOT
          <h1>web</h1>
          <p>allocation {{ env "NOMAD_ALLOC_ID" }} on node {{ env "node.unique.name" }}</p>
        EOT
      }

      resources {
        cpu    = 100 # MHz
        memory = 64  # MiB
      }
    }
  }
}
