"""`.pt2` archives: torch.export programs (`model.pt2`) and AOTInductor packages (`model_aoti_*.pt2`)."""
