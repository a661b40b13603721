"""Pure decisions of inference services: the autoscaler (:mod:`.autoscale`) and the load
balancer's choice of a replica (:mod:`.balance`). See docs/services.md."""
