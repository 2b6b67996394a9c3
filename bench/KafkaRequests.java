// Requests a running Kafka broker has served, by API, from its own JMX metrics
// (kafka.network:type=RequestMetrics,name=RequestsPerSec,request=*,version=*: the Count of each
// meter). Attaches to the broker's JVM by pid (same user), no JMX port needed. One snapshot per
// line read from stdin (one JVM for a whole benchmark): "<api> <count>" lines, then "END".
//
//     java bench/KafkaRequests.java <broker pid>     (bench/kafka_requests.py drives it)
import com.sun.tools.attach.VirtualMachine;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.Map;
import java.util.TreeMap;
import javax.management.MBeanServerConnection;
import javax.management.ObjectName;
import javax.management.remote.JMXConnector;
import javax.management.remote.JMXConnectorFactory;
import javax.management.remote.JMXServiceURL;

public class KafkaRequests {
    public static void main(String[] args) throws Exception {
        VirtualMachine vm = VirtualMachine.attach(args[0]);
        String url = vm.startLocalManagementAgent();
        vm.detach();
        try (JMXConnector c = JMXConnectorFactory.connect(new JMXServiceURL(url))) {
            MBeanServerConnection s = c.getMBeanServerConnection();
            ObjectName pattern =
                new ObjectName("kafka.network:type=RequestMetrics,name=RequestsPerSec,*");
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
            while (in.readLine() != null) {
                Map<String, Long> counts = new TreeMap<>();
                for (ObjectName n : s.queryNames(pattern, null)) {
                    long count = ((Number) s.getAttribute(n, "Count")).longValue();
                    counts.merge(n.getKeyProperty("request"), count, Long::sum);
                }
                StringBuilder out = new StringBuilder();
                counts.forEach((api, count) -> out.append(api).append(' ').append(count).append('\n'));
                System.out.print(out.append("END\n"));
                System.out.flush();
            }
        }
    }
}
