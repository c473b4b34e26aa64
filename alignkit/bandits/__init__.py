"""Linear and neural bandit environments, their losses and optimisers, and the DPO / RMB-PO study runner."""
