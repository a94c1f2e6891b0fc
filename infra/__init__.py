"""The local stack (real servers as processes) and the deployment files in infra/."""
