"""Knowledge distillation: losses (paper section 2), teacher cache and the Trainer that combines them."""
