from picluster.node.process import main

main()
