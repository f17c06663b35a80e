"""One module per `pycaffe-dist` subcommand, each with `main(argv) -> int`."""

COMMANDS = (
    "train",
    "test",
    "time",
    "simulate",
    "device_query",
    "convert_mnist_data",
    "convert_imageset",
    "convert_cifar_data",
    "compute_image_mean",
    "extract_features",
    "draw_net",
    "parse_log",
    "plot_log",
    "upgrade_net_proto_text",
    "upgrade_net_proto_binary",
    "upgrade_solver_proto_text",
)
